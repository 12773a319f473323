"""One exception family. The CLI turns each into a one-line message and an exit code
(one table, `mailctl.cli.EXIT_CODES`, maps each class to its code).

Every error mailctl raises on purpose is a `MailctlError` defined here. A subclass also
inherits the matching built-in where one fits (`ValueError`, `ConnectionError`,
`TimeoutError`), so generic handlers keep working, and it keeps the context a caller needs as
attributes (`file`, `line`, `key`; `code`, `recipient`; `address`), not only in its message.
`str(error)` is the message the CLI prints.

A bottom module: it must not import any other mailctl module.
"""

from __future__ import annotations


class MailctlError(Exception):
    """Base of every error mailctl raises on purpose."""


# --- configuration and usage -----------------------------------------------------------------


class ConfigError(MailctlError):
    """A profile, campaign or option is invalid; the message names file, line and key path."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.file = file
        self.line = line
        self.key = key


class UsageError(MailctlError):
    """The command line asks for something that cannot be done."""


class TemplateError(MailctlError):
    """A template does not compile or uses a field a recipient lacks."""


class CampaignChangedError(MailctlError):
    """A campaign's content changed since it started; `--update` applies it to unsent mail."""


class NeedsOperator(MailctlError):
    """Mail cannot go until the operator fixes something: credentials, TLS, the relay's
    address, DNS (preflight), a stopped campaign. Cron sees exit code 3."""


# --- inputs ----------------------------------------------------------------------------------


class InputError(MailctlError):
    """An input file (CSV, mailbox) cannot be read as a whole."""


class BounceParseError(InputError):
    """A message or mailbox cannot be read at all."""


class InvalidAddress(MailctlError, ValueError):
    """An address that fails the syntax check; the message says why."""

    def __init__(self, message: str, *, address: str | None = None) -> None:
        super().__init__(message)
        self.address = address


class MailboxError(InputError, ConnectionError):
    """A remote mailbox (IMAP, POP3) cannot be reached or read; what was imported stays."""

    def __init__(self, message: str, *, mailbox: str | None = None) -> None:
        super().__init__(message)
        self.mailbox = mailbox


class MailboxLoginError(MailboxError):
    """A remote mailbox refused the login (wrong user or password): exit 2, a
    configuration error (`mailctl.cli.EXIT_CODES`)."""


# --- the store -------------------------------------------------------------------------------


class StoreError(MailctlError):
    """The database cannot be opened, migrated or written."""


class StoreUrlError(StoreError):
    """`--db` / MAILCTL_DB names no database mailctl can use (a malformed or unknown URL)."""


class StoreConnectionError(StoreError, ConnectionError):
    """The database server refused the connection, the login, or went away for too long."""


class LockedError(StoreError):
    """Another mailctl run holds the database's send lock."""


# --- delivery and signing --------------------------------------------------------------------


class DeliveryError(MailctlError, ConnectionError):
    """SMTP delivery failed for a reason that concerns the connection, not one recipient."""

    def __init__(self, message: str, code: int | None = None, recipient: str | None = None):
        super().__init__(message)
        self.code = code
        self.recipient = recipient


class DkimError(MailctlError):
    """A DKIM key cannot be generated or used for signing."""


class DkimKeyError(DkimError, ConfigError):
    """A configured DKIM private key is missing, unreadable or of the wrong type."""


# --- DNS -------------------------------------------------------------------------------------


class DnsError(MailctlError):
    """A DNS lookup did not give an answer."""


class NXDomain(DnsError):
    """The name does not exist."""


class NoAnswer(DnsError):
    """The name exists but has no records of the asked type."""


class DnsTimeout(DnsError, TimeoutError):
    """No name server answered in time (or all failed): a temporary condition."""


# --- the simulator ---------------------------------------------------------------------------


class SimError(MailctlError):
    """The simulated provider is misconfigured or cannot start or stop."""
