"""One exception family. The CLI turns each into a one-line message and an exit code."""

from __future__ import annotations


class MailctlError(Exception):
    """Base of every error mailctl raises on purpose."""

    exit_code = 1


class ConfigError(MailctlError):
    """A profile, campaign or option is invalid; the message names file, line and key path."""

    exit_code = 2


class UsageError(MailctlError):
    """The command line asks for something that cannot be done."""

    exit_code = 2


class InputError(MailctlError):
    """An input file (CSV, mailbox) cannot be read as a whole."""


class StoreError(MailctlError):
    """The database cannot be opened, migrated or written."""


class LockedError(StoreError):
    """Another mailctl run holds the database's send lock."""

    exit_code = 75  # EX_TEMPFAIL: cron can simply try again next time


class TemplateError(MailctlError):
    """A template does not compile or uses a field a recipient lacks."""

    exit_code = 2


class CampaignChangedError(MailctlError):
    """A campaign's content changed since it started; `--update` applies it to unsent mail."""

    exit_code = 2


class DeliveryError(MailctlError, ConnectionError):
    """SMTP delivery failed for a reason that concerns the connection, not one recipient."""

    def __init__(self, message: str, code: int | None = None, recipient: str | None = None):
        super().__init__(message)
        self.code = code
        self.recipient = recipient
