"""DNS preflight: runs every check and judges the Gmail / Yahoo / Microsoft bulk-sender
requirements (see PROVIDERS.md).

`run_checks` answers two questions before mail leaves: will receivers authenticate it, and does
the setup meet the providers' bulk-sender requirements? Every failing check carries a one-line
fix. The checks themselves live beside this module:

- `spf`: the RFC 7208 evaluator and the ``spf.*`` checks (scope and limits in its docstring);
- `auth_checks`: DKIM key records, DMARC record and policy, DMARC alignment;
- `host_checks`: PTR / FCrDNS and HELO of each sending IP, the bounce domain's MX;
- here: one-click unsubscribe (not DNS, but a requirement like the rest), the requirement
  summary and `CheckReport`.

All DNS goes through a `resolver.Resolver`: `LiveResolver` (dnspython) in production,
`ZoneResolver` (zone files) in tests, which never use the network. A check that could not
finish because DNS timed out is a warning marked ``inconclusive``; requirements list it as
unchecked rather than met or missing.

``fast=True`` is what ``mailctl send`` runs before a campaign's first message. Against zone
files nothing is slow; against live DNS the cost is serial round trips, so fast mode keeps the
checks that a campaign can break and skips those that are properties of the infrastructure
and cost several lookups each: the walk of the whole SPF include tree (the lookup limit is
still enforced along each IP's actual evaluation path), the SPF record of the From domain when
it differs from the envelope domain, the addresses of the bounce domain's MX hosts, and the
per-IP PTR / FCrDNS / HELO checks. Requirements then list FCrDNS as unchecked.

Must not import anything above the dns package (config, delivery, cli); `preflight` is the
glue between profiles and this module.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from mailctl.dns.auth_checks import dkim_checks, dmarc_checks
from mailctl.dns.host_checks import mx_check, rdns_checks
from mailctl.dns.resolver import Resolver, normalise_name
from mailctl.dns.spf import spf_checks
from mailctl.dns.verdict import Check, CheckId, Status
from mailctl.errors import UsageError
from mailctl.message.dkim import DkimKeyConfig

__all__ = [
    "CheckReport",
    "Provider",
    "RequirementStatus",
    "run_checks",
]


class Provider(StrEnum):
    GMAIL = "gmail"
    YAHOO = "yahoo"
    MICROSOFT = "microsoft"


@dataclass(frozen=True)
class RequirementStatus:
    """A provider's bulk-sender requirements: met only when none is missing or unchecked."""

    met: bool
    missing: tuple[str, ...] = ()
    unchecked: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckReport:
    checks: tuple[Check, ...]
    requirements: Mapping[Provider, RequirementStatus] = field(default_factory=dict)

    @property
    def failed(self) -> tuple[Check, ...]:
        """The failing checks (empty, hence falsy, when everything passed or only warned)."""
        return tuple(c for c in self.checks if c.status is Status.FAIL)

    @property
    def warnings(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status is Status.WARN)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "checks": [
                {
                    "id": str(c.id),
                    "subject": c.subject,
                    "status": str(c.status),
                    "detail": c.detail,
                    "fix": c.fix,
                    "inconclusive": c.inconclusive,
                }
                for c in self.checks
            ],
            "requirements": {
                str(p): {"met": r.met, "missing": list(r.missing), "unchecked": list(r.unchecked)}
                for p, r in self.requirements.items()
            },
        }


# --------------------------------------------------------------------------------------------
# One-click unsubscribe (not DNS, but a bulk-sender requirement checked with the rest)


def _unsubscribe_check(url: str | None, mailto: str | None) -> Check:
    subject = "List-Unsubscribe"
    fix = "Set an https unsubscribe URL that accepts a one-click POST (RFC 8058)"
    if url:
        parts = urlsplit(url)
        if parts.scheme.lower() == "https" and parts.hostname:
            return Check(
                CheckId.UNSUBSCRIBE_ONE_CLICK,
                subject,
                Status.PASS,
                f"one-click unsubscribe via {parts.scheme}://{parts.hostname}/…",
            )
        return Check(
            CheckId.UNSUBSCRIBE_ONE_CLICK,
            subject,
            Status.FAIL,
            f"unsubscribe URL is not https: {url}",
            fix,
        )
    if mailto:
        return Check(
            CheckId.UNSUBSCRIBE_ONE_CLICK,
            subject,
            Status.FAIL,
            "mailto only: one-click unsubscribe needs an https URL",
            fix,
        )
    return Check(
        CheckId.UNSUBSCRIBE_ONE_CLICK,
        subject,
        Status.FAIL,
        "marketing mail without List-Unsubscribe",
        fix,
    )


# --------------------------------------------------------------------------------------------
# Requirements

# PROVIDERS.md: Gmail and Yahoo require all of these of bulk senders; Microsoft (May 2025)
# requires SPF, DKIM and an aligned DMARC record, and only recommends the rest.
_REQUIREMENTS: dict[Provider, tuple[str, ...]] = {
    Provider.GMAIL: ("SPF", "DKIM", "DMARC", "DMARC alignment", "FCrDNS", "one-click unsubscribe"),
    Provider.YAHOO: ("SPF", "DKIM", "DMARC", "DMARC alignment", "FCrDNS", "one-click unsubscribe"),
    Provider.MICROSOFT: ("SPF", "DKIM", "DMARC", "DMARC alignment"),
}


def _requirements(
    checks: Sequence[Check], envelope_domain: str, marketing: bool
) -> dict[Provider, RequirementStatus]:
    spf_ids = {CheckId.SPF_RECORD, CheckId.SPF_LOOKUPS, CheckId.SPF_AUTHORISES}
    selectors: dict[str, Callable[[Check], bool]] = {
        "SPF": lambda c: c.id in spf_ids and c.subject == envelope_domain,
        "DKIM": lambda c: c.id.startswith("dkim."),
        "DMARC": lambda c: c.id is CheckId.DMARC_RECORD,
        "DMARC alignment": lambda c: c.id is CheckId.DMARC_ALIGNMENT,
        "FCrDNS": lambda c: c.id is CheckId.RDNS_FCRDNS,
        "one-click unsubscribe": lambda c: c.id is CheckId.UNSUBSCRIBE_ONE_CLICK,
    }
    verdicts: dict[str, str] = {}
    for requirement, selects in selectors.items():
        relevant = [c for c in checks if selects(c)]
        if any(c.status is Status.FAIL for c in relevant):
            verdicts[requirement] = "missing"
        elif not relevant or any(c.inconclusive for c in relevant):
            verdicts[requirement] = "unchecked"
        else:
            verdicts[requirement] = "met"
    report = {}
    for provider, needed in _REQUIREMENTS.items():
        needed = tuple(r for r in needed if marketing or r != "one-click unsubscribe")
        missing = tuple(r for r in needed if verdicts[r] == "missing")
        unchecked = tuple(r for r in needed if verdicts[r] == "unchecked")
        report[provider] = RequirementStatus(not missing and not unchecked, missing, unchecked)
    return report


# --------------------------------------------------------------------------------------------
# Entry point


def run_checks(
    resolver: Resolver,
    *,
    from_domain: str,
    envelope_domain: str,
    sending_ips: Sequence[str],
    helo_name: str | None,
    dkim_keys: Sequence[DkimKeyConfig],
    marketing: bool,
    unsubscribe_url: str | None,
    unsubscribe_mailto: str | None,
    fast: bool = False,
) -> CheckReport:
    """Run the preflight checks and judge the bulk-sender requirements (module doc: fast mode)."""
    from_domain, envelope_domain = normalise_name(from_domain), normalise_name(envelope_domain)
    ips = []
    for ip in sending_ips:
        try:
            ips.append(str(ipaddress.ip_address(ip.strip())))
        except ValueError:
            raise UsageError(f"sending IP {ip!r} is not an IP address") from None

    checks: list[Check] = []
    checks += spf_checks(resolver, envelope_domain, ips, envelope=True, fast=fast)
    if from_domain != envelope_domain and not fast:
        checks += spf_checks(resolver, from_domain, ips, envelope=False, fast=fast)
    spf_ok = any(
        c.id is CheckId.SPF_AUTHORISES and c.subject == envelope_domain and c.status is Status.PASS
        for c in checks
    )

    dkim_ok: dict[DkimKeyConfig, bool] = {}
    if not dkim_keys:
        checks.append(
            Check(
                CheckId.DKIM_RECORD,
                from_domain,
                Status.FAIL,
                "no DKIM key configured",
                f"Generate a DKIM key for {from_domain}, publish it and add it to the profile",
            )
        )
    for key in dkim_keys:
        key_checks = dkim_checks(resolver, key, dkim_keys)
        dkim_ok[key] = all(c.status is not Status.FAIL and not c.inconclusive for c in key_checks)
        checks += key_checks

    checks += dmarc_checks(resolver, from_domain, envelope_domain, dkim_keys, dkim_ok, spf_ok)
    if not fast:
        for ip in ips:
            checks += rdns_checks(resolver, ip, helo_name, envelope_domain)
    checks.append(mx_check(resolver, envelope_domain, fast=fast))
    if marketing:
        checks.append(_unsubscribe_check(unsubscribe_url, unsubscribe_mailto))
    return CheckReport(tuple(checks), _requirements(checks, envelope_domain, marketing))
