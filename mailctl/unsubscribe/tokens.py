"""Signed unsubscribe tokens and the links that carry them.

A token names one recipient of one campaign's list and says until when it is good::

    base64url(address \\0 campaign \\0 list \\0 expiry) "." base64url(HMAC-SHA256[:16])

The MAC covers the address (as the recipient list stores it, so its canonical key), the
campaign, the list and the expiry, so a token
cannot be forged, moved to another address or kept alive past its expiry. The address is in
the token (not encrypted): the server needs it, and it only ever reaches that recipient.

The secret comes from the environment variable the profile names (`unsubscribe.secret_env`);
without one, a random key is created on first use in a file next to the database, mode 0600.

Standard library and mailctl.errors only: render, bounces and the web app import it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from mailctl.errors import ConfigError, UsageError
from mailctl.store.base import StoredKey

__all__ = [
    "KEY_FILE_SUFFIX",
    "TOKEN_PARAM",
    "Problem",
    "Signer",
    "TokenError",
    "UnsubscribeToken",
    "key_file_for",
    "load_secret",
    "stored_secret",
    "token_from_url",
    "url_with_token",
]

TOKEN_PARAM = "t"  # the query parameter that carries the token
KEY_FILE_SUFFIX = ".unsubscribe-key"
MAX_TOKEN_LENGTH = 2048  # longer input is not a token: refused before decoding
_MAC_BYTES = 16
_CONTEXT = b"mailctl-unsubscribe-v1\0"
_MIN_SECRET = 16


class Problem(StrEnum):
    """Why a token was refused."""

    MALFORMED = "malformed"
    TAMPERED = "tampered"
    EXPIRED = "expired"


class TokenError(UsageError, ValueError):
    """An unsubscribe token that is malformed, tampered with or expired (exit 2)."""

    def __init__(self, message: str, *, problem: Problem) -> None:
        super().__init__(message)
        self.problem = problem


@dataclass(frozen=True)
class UnsubscribeToken:
    """What a valid token says: who, from which campaign and list, good until when."""

    address: str
    campaign: str
    list_name: str
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Strict: any character outside the URL-safe alphabet is an error, not skipped."""
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


class Signer:
    """Makes and checks tokens with one secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < _MIN_SECRET:
            raise ConfigError(f"the unsubscribe secret is shorter than {_MIN_SECRET} bytes")
        self._secret = secret

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, _CONTEXT + payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def token(self, address: str, campaign: str, list_name: str, expires_at: float) -> str:
        """A token for `address` on `campaign`'s `list_name`, good until `expires_at`."""
        fields = (address.strip(), campaign, list_name, format(int(expires_at), "x"))
        if any("\0" in field for field in fields):
            raise ValueError("a token field contains NUL")
        payload = "\0".join(fields).encode("utf-8")
        return _b64(payload) + "." + _b64(self._mac(payload))

    def verify(self, token: str, now: float) -> UnsubscribeToken:
        """What `token` says; raises `TokenError` unless it is intact and unexpired."""
        if not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
            raise TokenError("not an unsubscribe token", problem=Problem.MALFORMED)
        encoded, mac = token.split(".")
        try:
            payload = _unb64(encoded)
            given = _unb64(mac)
        except (ValueError, TypeError):
            raise TokenError("not an unsubscribe token", problem=Problem.MALFORMED) from None
        # One spelling per token: base64's unused trailing bits must not give a second one.
        if _b64(payload) != encoded:
            raise TokenError("not an unsubscribe token", problem=Problem.MALFORMED)
        if _b64(given) != mac or not hmac.compare_digest(given, self._mac(payload)):
            raise TokenError(
                "the token's signature does not match (tampered, or signed with another key)",
                problem=Problem.TAMPERED,
            )
        try:
            address, campaign, list_name, expiry = payload.decode("utf-8").split("\0")
            expires_at = int(expiry, 16)
        except ValueError:
            raise TokenError("not an unsubscribe token", problem=Problem.MALFORMED) from None
        if expires_at < now:
            raise TokenError("the unsubscribe link has expired", problem=Problem.EXPIRED)
        return UnsubscribeToken(address, campaign, list_name, expires_at)

    def form_check(self, token: str) -> str:
        """The confirm form's anti-forgery value for `token` (only this server can make it)."""
        return _b64(hmac.new(self._secret, b"confirm\0" + token.encode(), "sha256").digest()[:16])


def url_with_token(base_url: str, token: str) -> str:
    """`base_url` with the token added as the ``t`` query parameter."""
    parts = urlsplit(base_url)
    query = (parts.query + "&" if parts.query else "") + urlencode({TOKEN_PARAM: token})
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def token_from_url(url: str) -> str | None:
    """The token in an unsubscribe URL (or a bare token), else None."""
    url = url.strip()
    if "://" not in url and "?" not in url:
        return url or None
    values = parse_qs(urlsplit(url).query).get(TOKEN_PARAM)
    return values[0] if values else None


def key_file_for(database: Path) -> Path:
    """Where the generated secret lives: next to the database."""
    return database.with_name(database.name + KEY_FILE_SUFFIX)


def stored_secret(stored: StoredKey | None) -> bytes | None:
    """The unsubscribe key a shared database keeps itself (created on first use), or None
    when it keeps none (SQLite: the key file beside it)."""
    shared = stored("unsubscribe", lambda: secrets.token_urlsafe(32)) if stored else None
    return None if shared is None else shared.encode("ascii")


def load_secret(
    secret_env: str | None,
    database: Path | None,
    stored: StoredKey | None = None,
) -> bytes:
    """The signing secret: the named environment variable, else the key kept in the
    database when `stored` (the store's `database_key`) has one (a server shared by hosts),
    else the key file next to the database (created on first use, mode 0600)."""
    if secret_env:
        value = os.environ.get(secret_env)
        if not value:
            raise ConfigError(f"environment variable {secret_env} (unsubscribe secret) is not set")
        if value:
            if len(value) < _MIN_SECRET:
                raise ConfigError(
                    f"environment variable {secret_env}: an unsubscribe secret needs at least "
                    f"{_MIN_SECRET} characters"
                )
            return value.encode("utf-8")
    shared = stored_secret(stored)
    if shared is not None:
        return shared
    if database is None:
        raise ConfigError("no unsubscribe secret: set the profile's unsubscribe.secret_env")
    path = key_file_for(database)
    if not path.exists():
        # Written whole to a private temporary file, then linked into place: a concurrent
        # first use never reads a half-written key, and the first writer wins.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(32) + "\n")
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        except OSError as exc:
            raise ConfigError(
                f"{path}: cannot create the unsubscribe key: {exc.strerror}"
            ) from None
        finally:
            tmp.unlink(missing_ok=True)
    try:
        value = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"{path}: cannot read the unsubscribe key: {exc}") from None
    if len(value) < _MIN_SECRET:
        raise ConfigError(f"{path}: the unsubscribe key is shorter than {_MIN_SECRET} characters")
    return value.encode("ascii")
