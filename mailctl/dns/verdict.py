"""What every preflight check returns: a `Check` (one verdict with its one-line fix), its
`CheckId` and `Status`.

Shared by the check modules (spf, auth_checks, host_checks) and `checks`, which collects them.
Must not import any other mailctl module.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Check", "CheckId", "Status"]


class Status(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


class CheckId(StrEnum):
    SPF_RECORD = "spf.record"
    SPF_LOOKUPS = "spf.lookups"
    SPF_AUTHORISES = "spf.authorises"
    SPF_ALL = "spf.all"
    DKIM_RECORD = "dkim.record"
    DKIM_KEY_MATCH = "dkim.key_match"
    DKIM_KEY_SIZE = "dkim.key_size"
    DMARC_RECORD = "dmarc.record"
    DMARC_POLICY = "dmarc.policy"
    DMARC_ALIGNMENT = "dmarc.alignment"
    RDNS_FCRDNS = "rdns.fcrdns"
    RDNS_HELO = "rdns.helo"
    MX_BOUNCE = "mx.bounce"
    UNSUBSCRIBE_ONE_CLICK = "unsubscribe.one_click"


@dataclass(frozen=True)
class Check:
    """One verdict about one thing (a domain, a DNS name, an IP)."""

    id: CheckId
    subject: str
    status: Status
    detail: str
    fix: str | None = None
    # DNS timed out before the check could decide; it is a warning, not a verdict.
    inconclusive: bool = False

    def __post_init__(self) -> None:
        if self.status is Status.FAIL and not self.fix:
            raise ValueError(f"failing check {self.id} on {self.subject} needs a fix")
