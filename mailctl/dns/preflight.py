"""Glue between profiles/campaigns and the DNS checks and DKIM keys they configure."""

from __future__ import annotations

from collections.abc import Sequence
from email.utils import parseaddr
from pathlib import Path

from mailctl.config.campaign import Campaign
from mailctl.config.profiles import Profile, TrafficClass, TransportKind
from mailctl.dns.checks import CheckReport, run_checks
from mailctl.dns.resolver import LiveResolver, Resolver, ZoneResolver
from mailctl.message.dkim import DkimAlgorithm, DkimKeyConfig, load_key


def dkim_keys(profile: Profile) -> list[DkimKeyConfig]:
    """The profile's DKIM keys, read from their files or environment variables."""
    return [
        DkimKeyConfig(
            selector=ref.selector,
            domain=ref.domain,
            private_key_pem=load_key(key_file=ref.key_file, key_env=ref.key_env),
            algorithm=DkimAlgorithm(ref.algorithm),
        )
        for ref in profile.dkim
    ]


def signing_key(profile: Profile, from_address: str) -> DkimKeyConfig | None:
    """The key whose d= aligns with the From domain: the domain itself, else a parent of it
    (relaxed DMARC alignment). None when the profile signs nothing for this domain."""
    domain = parseaddr(from_address)[1].rpartition("@")[2].lower()
    candidates = [
        ref for ref in profile.dkim if domain == ref.domain or domain.endswith("." + ref.domain)
    ]
    if not candidates:
        return None
    best = max(candidates, key=lambda ref: len(ref.domain))
    return DkimKeyConfig(
        selector=best.selector,
        domain=best.domain,
        private_key_pem=load_key(key_file=best.key_file, key_env=best.key_env),
        algorithm=DkimAlgorithm(best.algorithm),
    )


def resolver_for(zone_files: Sequence[Path]) -> Resolver:
    if zone_files:
        return ZoneResolver.from_files(list(zone_files))
    return LiveResolver(timeout=5.0)


def sending_ips(profile: Profile) -> list[str]:
    """IPs whose reverse DNS is ours to check: only direct delivery sends from them."""
    if profile.transport is not TransportKind.DIRECT:
        return []
    return [ip.ip for pool in profile.pools.values() for ip in pool]


def helo_name(profile: Profile) -> str | None:
    if profile.helo:
        return profile.helo
    names = {ip.helo for pool in profile.pools.values() for ip in pool if ip.helo}
    return next(iter(sorted(names)), None)


def check(
    resolver: Resolver,
    profile: Profile,
    campaign: Campaign | None,
    *,
    from_domain: str | None = None,
    fast: bool = False,
) -> CheckReport:
    """Run the preflight for a profile (and a campaign's From, class and unsubscribe)."""
    if campaign is not None:
        from_domain = parseaddr(campaign.from_addr)[1].rpartition("@")[2]
    if not from_domain:
        keys = profile.dkim
        from_domain = keys[0].domain if keys else profile.bounce_domain
    if not from_domain:
        from mailctl.errors import UsageError

        raise UsageError(
            "no From domain to check: give --campaign, or configure dkim or bounce_domain"
        )
    marketing = campaign is not None and campaign.traffic_class is TrafficClass.MARKETING
    return run_checks(
        resolver,
        from_domain=from_domain,
        envelope_domain=profile.bounce_domain or from_domain,
        sending_ips=sending_ips(profile),
        helo_name=helo_name(profile),
        dkim_keys=dkim_keys(profile),
        marketing=marketing,
        unsubscribe_url=(
            (campaign.unsubscribe_url or profile.unsubscribe.base_url) if campaign else None
        ),
        unsubscribe_mailto=campaign.unsubscribe_mailto if campaign else None,
        fast=fast,
    )
