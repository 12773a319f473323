"""Mailboxes over the network: IMAP and POP3 (implicit TLS, or STARTTLS where offered).

``imaps://user@host[:port]/FOLDER``, ``imap://…`` (STARTTLS), ``pop3s://user@host[:port]``,
``pop3://…`` (STLS). The password comes from the environment variable the caller names;
certificates are verified unless the operator asks for ``insecure``.

Why the standard library's imaplib and poplib: they speak every command needed here (UID
SEARCH/FETCH/MOVE, UIDL/RETR/DELE), support TLS contexts and timeouts, are maintained with
CPython and add no dependency. The well-kept alternatives (imapclient, aioimaplib) would
add parsing convenience that a fetch of ``BODY.PEEK[]`` by UID does not need.

Idempotence and resumption: IMAP keeps (UIDVALIDITY, highest imported UID) per mailbox in the
store, written in the same transaction as the batch's reports; POP3 keeps each imported
UIDL. A run that dies mid-batch has committed whole batches only, and the digest of each
raw message keeps a re-fetched one from counting twice. Messages are fetched in batches,
so memory stays flat whatever the mailbox size.

Reads bytes and records marks; parsing and suppression are the caller's (`suppression`).
Must not import the parser, the CLI or anything that prints.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlsplit

from mailctl.errors import MailboxError, MailboxLoginError, UsageError
from mailctl.store.base import Store

__all__ = ["RemoteMailbox", "RemoteOptions", "fetch_remote", "is_remote", "parse_mailbox_url"]

_SCHEMES = {"imaps": 993, "imap": 143, "pop3s": 995, "pop3": 110}
_UID_RE = re.compile(rb"UID (\d+)")


def is_remote(path: str) -> bool:
    """Whether a `bounces import` argument names a remote mailbox."""
    return bool(re.match(r"(?i)(imaps?|pop3s?)://", path))


@dataclass(frozen=True)
class RemoteMailbox:
    scheme: str
    user: str
    host: str
    port: int
    folder: str

    @property
    def imap(self) -> bool:
        return self.scheme.startswith("imap")

    @property
    def key(self) -> str:
        """The mailbox's identity in the store (and in messages): no password, ever."""
        folder = f"/{self.folder}" if self.imap else ""
        return f"{self.scheme}://{self.user}@{self.host}:{self.port}{folder}"


@dataclass(frozen=True)
class RemoteOptions:
    password_env: str | None = None
    insecure: bool = False
    ca_file: Path | None = None
    move_to: str | None = None
    delete: bool = False
    batch: int = 50  # messages per fetch, and per write transaction (short: `send` waits)
    timeout: float = 60.0


def parse_mailbox_url(url: str) -> RemoteMailbox:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise UsageError(f"{url}: not an imap://, imaps://, pop3:// or pop3s:// URL")
    if parts.password is not None:
        raise UsageError(
            f"{scheme}://…: put the password in an environment variable "
            "(--password-env), not in the URL"
        )
    if not parts.username or not parts.hostname:
        raise UsageError(f"{url}: give user@host, e.g. {scheme}://bounces@mail.example.com/INBOX")
    try:
        port = parts.port or _SCHEMES[scheme]
    except ValueError:
        raise UsageError(f"{url}: the port is not a number (1-65535)") from None
    folder = unquote(parts.path.lstrip("/")) or "INBOX"
    if not scheme.startswith("imap") and parts.path.strip("/"):
        raise UsageError(f"{url}: a POP3 mailbox has no folders")
    return RemoteMailbox(scheme, unquote(parts.username), parts.hostname, port, folder)


def _context(options: RemoteOptions) -> ssl.SSLContext:
    if options.insecure:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        return ssl.create_default_context(cafile=str(options.ca_file) if options.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"--ca-file {options.ca_file}: cannot load: {exc}") from None


def _password(mailbox: RemoteMailbox, options: RemoteOptions) -> str:
    if not options.password_env:
        raise UsageError(
            f"{mailbox.key}: name the environment variable that holds the "
            "password with --password-env"
        )
    value = os.environ.get(options.password_env)
    if value is None:
        raise UsageError(f"--password-env: environment variable {options.password_env} is not set")
    return value


def _imap_quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(data: object) -> str:
    """A server's answer as one short line (never anything of ours)."""
    if isinstance(data, list | tuple):
        data = b" ".join(d if isinstance(d, bytes) else str(d).encode() for d in data)
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    if re.fullmatch(r"b'.*'|b\".*\"", text):  # imaplib's errors carry repr(bytes)
        text = text[2:-1]
    return " ".join(text.split())[:200]


def _batches(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


Handler = Callable[[str, bytes], None]
# Commits the reports handled so far together with the mark the callable writes: one
# transaction, so a mailbox's mark never runs ahead of (or behind) its reports.
Committer = Callable[[Callable[[], None]], None]


def fetch_remote(
    store: Store,
    url: str,
    options: RemoteOptions,
    *,
    handle: Handler,
    commit: Committer,
    now: float,
    on_total: Callable[[int], None] | None = None,
) -> int:
    """Feed each new message of a remote mailbox to `handle`, then `commit` each batch with
    the mailbox's mark (written inside that commit's transaction); returns how many were
    fetched."""
    mailbox = parse_mailbox_url(url)
    if options.move_to and not mailbox.imap:
        raise UsageError(f"{mailbox.key}: --move-to needs IMAP (POP3 has no folders)")
    if options.move_to and options.delete:
        raise UsageError("give --move-to or --delete, not both")
    password = _password(mailbox, options)
    context = _context(options)
    try:
        if mailbox.imap:
            return _imap(store, mailbox, password, context, options, handle, commit, now, on_total)
        return _pop3(store, mailbox, password, context, options, handle, commit, now, on_total)
    except MailboxError:
        raise
    except (imaplib.IMAP4.abort, poplib.error_proto, OSError, EOFError) as exc:
        if isinstance(exc, ssl.SSLCertVerificationError):
            raise MailboxError(
                f"{mailbox.key}: TLS certificate not trusted: {exc.verify_message} "
                "(--ca-file to trust a private CA, --insecure to skip the check)",
                mailbox=mailbox.key,
            ) from None
        if isinstance(exc, ConnectionRefusedError | socket.gaierror):
            raise MailboxError(
                f"{mailbox.key}: cannot connect: {_text(str(exc))}", mailbox=mailbox.key
            ) from None
        raise MailboxError(
            f"{mailbox.key}: connection lost: {type(exc).__name__}: {_text(str(exc))} "
            "(what was imported is kept; run again to resume)",
            mailbox=mailbox.key,
        ) from None


def _imap(
    store: Store,
    mailbox: RemoteMailbox,
    password: str,
    context: ssl.SSLContext,
    options: RemoteOptions,
    handle: Handler,
    commit: Committer,
    now: float,
    on_total: Callable[[int], None] | None,
) -> int:
    conn: imaplib.IMAP4
    if mailbox.scheme == "imaps":
        conn = imaplib.IMAP4_SSL(
            mailbox.host, mailbox.port, ssl_context=context, timeout=options.timeout
        )
    else:
        conn = imaplib.IMAP4(mailbox.host, mailbox.port, timeout=options.timeout)
        if "STARTTLS" in conn.capabilities:
            conn.starttls(context)
        elif not options.insecure:
            conn.shutdown()
            raise MailboxError(
                f"{mailbox.key}: the server offers no STARTTLS; refusing to send the password "
                "in clear (use imaps://, or --insecure)",
                mailbox=mailbox.key,
            )
    fetched = 0
    try:
        try:
            conn.login(mailbox.user, password)
        except imaplib.IMAP4.error as exc:
            raise MailboxLoginError(
                f"{mailbox.key}: login failed: {_text(str(exc))}", mailbox=mailbox.key
            ) from None
        typ, data = conn.select(
            _imap_quote(mailbox.folder), readonly=not (options.move_to or options.delete)
        )
        if typ != "OK":
            raise MailboxError(
                f"{mailbox.key}: cannot open folder: {_text(data)}", mailbox=mailbox.key
            )
        _, validity = conn.response("UIDVALIDITY")
        uidvalidity = int(validity[0]) if validity and validity[0] else None
        mark = store.remote_mark(mailbox.key)
        last = mark[1] if mark is not None and mark[0] == uidvalidity else 0
        typ, data = conn.uid("SEARCH", f"UID {last + 1}:*")
        if typ != "OK":
            raise MailboxError(f"{mailbox.key}: search failed: {_text(data)}", mailbox=mailbox.key)
        # "N:*" always names the last message, even below N: keep only the new ones.
        uids = sorted(int(u) for u in (data[0] or b"").split() if int(u) > last)
        if on_total:
            on_total(len(uids))
        if options.move_to:
            conn.create(_imap_quote(options.move_to))  # NO when it exists: that is fine
        # The capabilities after login (Dovecot announces MOVE only then).
        typ, data = conn.capability()
        can_move = typ == "OK" and b"MOVE" in (data[0] or b"").upper().split()
        for batch in _batches(uids, max(1, options.batch)):
            uid_set = ",".join(map(str, batch))
            typ, data = conn.uid("FETCH", uid_set, "(BODY.PEEK[])")
            if typ != "OK":
                raise MailboxError(
                    f"{mailbox.key}: fetch failed: {_text(data)}", mailbox=mailbox.key
                )
            for item in data:
                if not isinstance(item, tuple):
                    continue
                found = _UID_RE.search(item[0])
                if found is None:
                    continue
                handle(f"{mailbox.key};UID={int(found.group(1))}", item[1])
                fetched += 1
            commit(partial(store.set_remote_mark, mailbox.key, uidvalidity, batch[-1], now))
            if options.move_to:
                if can_move:
                    typ, data = conn.uid("MOVE", uid_set, _imap_quote(options.move_to))
                else:
                    typ, data = conn.uid("COPY", uid_set, _imap_quote(options.move_to))
                    if typ == "OK":
                        conn.uid("STORE", uid_set, "+FLAGS.SILENT", "(\\Deleted)")
                        conn.expunge()
                if typ != "OK":
                    raise MailboxError(
                        f"{mailbox.key}: move failed: {_text(data)}", mailbox=mailbox.key
                    )
            elif options.delete:
                conn.uid("STORE", uid_set, "+FLAGS.SILENT", "(\\Deleted)")
                conn.expunge()
        try:
            conn.close()
        except imaplib.IMAP4.error:
            pass
    finally:
        try:
            conn.logout()
        except (imaplib.IMAP4.error, OSError, EOFError):
            pass
    return fetched


def _pop3(
    store: Store,
    mailbox: RemoteMailbox,
    password: str,
    context: ssl.SSLContext,
    options: RemoteOptions,
    handle: Handler,
    commit: Committer,
    now: float,
    on_total: Callable[[int], None] | None,
) -> int:
    conn: poplib.POP3
    if mailbox.scheme == "pop3s":
        conn = poplib.POP3_SSL(mailbox.host, mailbox.port, context=context, timeout=options.timeout)
    else:
        conn = poplib.POP3(mailbox.host, mailbox.port, timeout=options.timeout)
        try:
            capabilities = conn.capa()
        except poplib.error_proto:
            capabilities = {}
        if "STLS" in capabilities:
            conn.stls(context)
        elif not options.insecure:
            conn.close()
            raise MailboxError(
                f"{mailbox.key}: the server offers no STLS; refusing to send the password "
                "in clear (use pop3s://, or --insecure)",
                mailbox=mailbox.key,
            )
    fetched = 0
    try:
        try:
            conn.user(mailbox.user)
            conn.pass_(password)
        except poplib.error_proto as exc:
            raise MailboxLoginError(
                f"{mailbox.key}: login failed: {_text(exc.args[0] if exc.args else '')}",
                mailbox=mailbox.key,
            ) from None
        _, listing, _ = conn.uidl()
        numbered: list[tuple[int, str]] = []
        for line in listing:
            position, _, uid = line.decode("ascii", "replace").partition(" ")
            numbered.append((int(position), uid.strip()))
        seen = store.remote_seen(mailbox.key, [uid for _, uid in numbered])
        todo = [(number, uid) for number, uid in numbered if uid not in seen]
        if on_total:
            on_total(len(todo))
        for start in range(0, len(todo), max(1, options.batch)):
            batch = todo[start : start + max(1, options.batch)]
            for number, uid in batch:
                _, lines, _ = conn.retr(number)
                handle(f"{mailbox.key};UIDL={uid}", b"\r\n".join(lines) + b"\r\n")
                fetched += 1
            commit(partial(store.add_remote_seen, mailbox.key, [uid for _, uid in batch], now))
            if options.delete:
                for number, _ in batch:
                    conn.dele(number)
        conn.quit()  # deletions take effect only at QUIT
    except BaseException:
        try:
            conn.close()
        except OSError:
            pass
        raise
    return fetched
