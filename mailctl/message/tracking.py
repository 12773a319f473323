"""The tracking id and where it travels: Message-ID, the X-Mailctl-ID header, the VERP address.

One definition of the format, used both to stamp outgoing mail (render, delivery) and to find
a returned report's message again (bounces, the simulator).

A tracking id is ``mc2-`` followed by 24 base32 characters: 16 for 10 random bytes, then 8
for the first 5 bytes of an HMAC-SHA256 of those 16 characters under the database's tracking
key, for example ``mc2-abcdefghijklmnopqrstuvwx``. The VERP return path carries it as
``bounces+<id>@<bounce domain>``. Nobody without the key can make an id that verifies, so a
forged report cannot name a message (`TrackingKeys.verify`). Ids of the first format
(``mc1-`` and 16 characters, unsigned) that are already in a database still correlate by
their stored value; a new one is never made.

The key comes from an environment variable a profile names (``tracking_key_env``), else from
a key file created at first use next to the database (``<db>.key``, mode 0600, created with
O_EXCL so two processes never make two keys). Losing the key file means reports about
messages sent before can only correlate by recipient and recent send.

Imports the standard library and mailctl.errors only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from mailctl.errors import ConfigError
from mailctl.store.base import StoredKey

__all__ = [
    "KEY_FILE_SUFFIX",
    "LEGACY_PREFIX",
    "TRACKING_HEADER",
    "TRACKING_HEADER_IN_TEXT_RE",
    "TRACKING_PREFIX",
    "TRACKING_RE",
    "TRACKING_RE_BYTES",
    "VERP_LOCAL_PREFIX",
    "VERP_RE",
    "TrackingKeys",
    "bounce_address",
    "key_file_for",
    "load_key_file",
    "new_tracking_id",
    "tracking_keys",
    "verp_address",
    "verp_token",
]

TRACKING_PREFIX = "mc2-"  # signed ids (made today)
LEGACY_PREFIX = "mc1-"  # unsigned ids of earlier versions: correlate only by the stored value
TRACKING_HEADER = "X-Mailctl-ID"
VERP_LOCAL_PREFIX = "bounces+"  # the return path's local part before the tracking id
KEY_FILE_SUFFIX = ".key"
KEY_BYTES = 32
MIN_ENV_KEY_CHARS = 16
_NONCE_CHARS = 16
_MAC_BYTES = 5  # 40 bits: each forged report is one guess, made by mail

_TOKEN = r"mc2-[a-z2-7]{24}|mc1-[a-z2-7]{16}"
TRACKING_RE = re.compile(_TOKEN)
TRACKING_RE_BYTES = re.compile(_TOKEN.encode("ascii"))
# A VERP return path as a receiver echoes it back (To:, Delivered-To:, Return-Path:, ...).
VERP_RE = re.compile(rf"bounces\+({_TOKEN})@", re.I)
# The header line quoted in a free-text bounce body.
TRACKING_HEADER_IN_TEXT_RE = re.compile(rf"X-Mailctl-ID[ \t]*:[ \t]*({_TOKEN})", re.I)


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").lower().rstrip("=")


class TrackingKeys:
    """The keys of one database: the first signs new ids, any of them verifies an id."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("at least one tracking key is needed")
        self.keys = tuple(keys)

    def _mac(self, key: bytes, nonce: str) -> str:
        return _b32(hmac.new(key, nonce.encode("ascii"), hashlib.sha256).digest()[:_MAC_BYTES])

    def new_id(self) -> str:
        """A new signed tracking id."""
        nonce = _b32(os.urandom(10))
        return TRACKING_PREFIX + nonce + self._mac(self.keys[0], nonce)

    def verify(self, tracking_id: str) -> bool:
        """Whether a signed id was made with one of these keys (False for legacy ids)."""
        if len(tracking_id) != len(TRACKING_PREFIX) + _NONCE_CHARS + 8:
            return False
        if not tracking_id.startswith(TRACKING_PREFIX):
            return False
        nonce = tracking_id[len(TRACKING_PREFIX) : len(TRACKING_PREFIX) + _NONCE_CHARS]
        mac = tracking_id[len(TRACKING_PREFIX) + _NONCE_CHARS :]
        return any(hmac.compare_digest(self._mac(key, nonce), mac) for key in self.keys)


def is_legacy(tracking_id: str) -> bool:
    """An unsigned id of the first format (it can only be trusted by its stored value)."""
    return tracking_id.startswith(LEGACY_PREFIX)


_EPHEMERAL: list[TrackingKeys] = []


def new_tracking_id(keys: TrackingKeys | None = None) -> str:
    """A unique signed token that survives in returned bounce headers (Message-ID,
    X-Mailctl-ID). Without `keys` it is signed with a key of this process only: fine for a
    preview, never for a message whose reports must be found again."""
    if keys is None:
        if not _EPHEMERAL:
            _EPHEMERAL.append(TrackingKeys([os.urandom(KEY_BYTES)]))
        keys = _EPHEMERAL[0]
    return keys.new_id()


def key_file_for(db_location: str) -> Path:
    """Where the key file of a database lives: next to it, ``<db>.key``."""
    return Path(db_location + KEY_FILE_SUFFIX)


def load_key_file(path: Path) -> bytes:
    """The key in `path`, created (random, mode 0600, O_EXCL) when it does not exist yet."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the tracking key: {exc.strerror}") from None
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(os.urandom(KEY_BYTES).hex() + "\n")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as handle:
            text = handle.read(4 * KEY_BYTES).strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the tracking key: {exc.strerror}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        # Another process may be between O_EXCL and its write: never sign with half a key.
        raise ConfigError(f"{path}: not a tracking key (expected {2 * KEY_BYTES} hex digits)")
    return key


def _env_key(name: str, *, required: bool) -> bytes | None:
    value = os.environ.get(name)
    if value is None:
        if required:
            raise ConfigError(
                f"environment variable {name} (tracking_key_env) is not set", key="tracking_key_env"
            )
        return None
    if len(value) < MIN_ENV_KEY_CHARS:
        raise ConfigError(
            f"environment variable {name} (tracking_key_env) holds fewer than "
            f"{MIN_ENV_KEY_CHARS} characters: too short for a key",
            key="tracking_key_env",
        )
    return value.encode("utf-8")


def tracking_keys(
    db_location: str,
    sign_env: str | None = None,
    verify_envs: Iterable[str] = (),
    stored: StoredKey | None = None,
) -> TrackingKeys:
    """The keys for a database: `sign_env`'s key signs when given (it must be set), else the
    database's own key; every key named in `verify_envs` that is set verifies too, as does the
    database's. That key is the one kept in the database when `stored` (the store's
    `database_key`) has one (a server shared by hosts), else the key file next to it. A
    database in memory gets a key of its own that lives as long as the process."""
    keys: list[bytes] = []
    if sign_env:
        key = _env_key(sign_env, required=True)
        assert key is not None
        keys.append(key)
    for name in verify_envs:
        key = _env_key(name, required=False)
        if key is not None and key not in keys:
            keys.append(key)
    shared = stored("tracking", lambda: os.urandom(KEY_BYTES).hex()) if stored else None
    if shared is not None:
        keys.append(bytes.fromhex(shared))
    elif db_location == ":memory:":
        keys.append(os.urandom(KEY_BYTES))
    else:
        keys.append(load_key_file(key_file_for(db_location)))
    return TrackingKeys(keys)


def verp_address(tracking_id: str, bounce_domain: str) -> str:
    """The VERP return path that carries `tracking_id` back in a bounce."""
    return f"{VERP_LOCAL_PREFIX}{tracking_id}@{bounce_domain}"


def bounce_address(bounce_domain: str) -> str:
    """The plain (non-VERP) return path on the bounce domain."""
    return f"bounces@{bounce_domain}"


def verp_token(address: str) -> str | None:
    """The tracking id inside a VERP address (or a header that contains one), else None."""
    found = VERP_RE.search(address)
    return found.group(1) if found else None
