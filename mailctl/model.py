"""Small value types shared by every layer: the states of a message.

A bottom module: imports nothing from mailctl, so the store and the domain may both use it.
"""

from __future__ import annotations

from enum import StrEnum


class MessageState(StrEnum):
    """Where one message (campaign x recipient) stands; the values are stored as they are."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    FAILED = "failed"
    EXPIRED = "expired"
    SUPPRESSED = "suppressed"
    CANCELLED = "cancelled"
