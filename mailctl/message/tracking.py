"""The tracking id and where it travels: Message-ID, the X-Mailctl-ID header, the VERP address.

One definition of the format, used both to stamp outgoing mail (render) and to find a
returned report's message again (bounces, the simulator). A tracking id is ``mc1-`` followed
by 16 base32 characters (10 random bytes), for example ``mc1-abcdefghijklmnop``; the VERP
return path carries it as ``bounces+<id>@<bounce domain>``.

Standard library only: it must not import any other mailctl module.
"""

from __future__ import annotations

import base64
import os
import re

__all__ = [
    "TRACKING_HEADER",
    "TRACKING_HEADER_IN_TEXT_RE",
    "TRACKING_PREFIX",
    "TRACKING_RE",
    "TRACKING_RE_BYTES",
    "VERP_LOCAL_PREFIX",
    "VERP_RE",
    "bounce_address",
    "new_tracking_id",
    "verp_address",
    "verp_token",
]

TRACKING_PREFIX = "mc1-"
TRACKING_HEADER = "X-Mailctl-ID"
VERP_LOCAL_PREFIX = "bounces+"  # the return path's local part before the tracking id

_TOKEN = r"mc1-[a-z2-7]{16}"
TRACKING_RE = re.compile(_TOKEN)
TRACKING_RE_BYTES = re.compile(_TOKEN.encode("ascii"))
# A VERP return path as a receiver echoes it back (To:, Delivered-To:, Return-Path:, ...).
VERP_RE = re.compile(rf"bounces\+({_TOKEN})@", re.I)
# The header line quoted in a free-text bounce body.
TRACKING_HEADER_IN_TEXT_RE = re.compile(rf"X-Mailctl-ID\s*:\s*({_TOKEN})", re.I)


def new_tracking_id() -> str:
    """A unique token that survives in returned bounce headers (Message-ID, X-Mailctl-ID)."""
    return TRACKING_PREFIX + base64.b32encode(os.urandom(10)).decode("ascii").lower()


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
