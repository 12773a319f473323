"""One exception family. The CLI turns each into a one-line message and an exit code
(its table, `mailctl.cli.EXIT_CODES`, maps each class to its code)."""

from __future__ import annotations


class MailctlError(Exception):
    """Base of every error mailctl raises on purpose."""


class ConfigError(MailctlError):
    """A profile, campaign or option is invalid; the message names file, line and key path."""


class UsageError(MailctlError):
    """The command line asks for something that cannot be done."""


class InputError(MailctlError):
    """An input file (CSV, mailbox) cannot be read as a whole."""


class StoreError(MailctlError):
    """The database cannot be opened, migrated or written."""


class LockedError(StoreError):
    """Another mailctl run holds the database's send lock."""


class TemplateError(MailctlError):
    """A template does not compile or uses a field a recipient lacks."""


class CampaignChangedError(MailctlError):
    """A campaign's content changed since it started; `--update` applies it to unsent mail."""


class DeliveryError(MailctlError, ConnectionError):
    """SMTP delivery failed for a reason that concerns the connection, not one recipient."""

    def __init__(self, message: str, code: int | None = None, recipient: str | None = None):
        super().__init__(message)
        self.code = code
        self.recipient = recipient
