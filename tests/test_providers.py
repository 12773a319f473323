"""MX rollup against zone files in tests/data/zones_mx and small in-test resolvers (no network)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailctl.config.profiles import parse_mx_override
from mailctl.dns.providers import (
    AddressAnswer,
    DirectAction,
    DomainRoute,
    InMemoryRouteCache,
    MxAnswer,
    RouteStatus,
    provider_for_mx_hosts,
    registered_domain,
    resolve_domains,
)
from mailctl.dns.resolver import ZoneResolver
from mailctl.errors import DnsTimeout, NoAnswer, NXDomain

ZONES = sorted((Path(__file__).parent / "data" / "zones_mx").glob("*.zone"))
NOW = 1_700_000_000.0


@pytest.fixture
def zones() -> ZoneResolver:
    return ZoneResolver.from_files(ZONES, timeouts=["slow.test"])


def resolve(domains, resolver, **kwargs):
    return asyncio.run(resolve_domains(domains, resolver, now=NOW, **kwargs))


@pytest.mark.parametrize(
    ("hosts", "provider"),
    [
        (["gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com"], "google"),
        (["aspmx.l.google.com"], "google"),
        (["aspmx2.googlemail.com"], "google"),
        (["hotmail-com.olc.protection.outlook.com"], "microsoft"),
        (["contoso-com.mail.protection.outlook.com"], "office365"),
        (["contoso-com.o-v1.mx.microsoft"], "office365"),
        (["mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net"], "yahoo"),
        (["mx-aol.mail.gm0.yahoodns.net"], "yahoo"),
        (["mx01.mail.icloud.com"], "apple"),
        (["eu-smtp-inbound-1.mimecast.com"], "mimecast"),
        (["mx1.mail.isp.co.uk"], "isp.co.uk"),
        (["mx.example.com.au"], "example.com.au"),
        (["mx.provider.de", "mx2.provider.de"], "provider.de"),
        # A look-alike is not Google: suffixes match at a label boundary.
        (["mx.evilgoogle.com"], "evilgoogle.com"),
        # The primary host decides, not a backup elsewhere.
        (["mx.company.example", "aspmx.l.google.com"], "company.example"),
        (["MX01.Mail.ICloud.com."], "apple"),
        ([], ""),
    ],
)
def test_mx_hosts_roll_up_to_their_provider(hosts: list[str], provider: str) -> None:
    assert provider_for_mx_hosts(hosts) == provider


def test_registered_domain_drops_subdomains_above_the_public_suffix() -> None:
    assert registered_domain("a.b.example.org") == "example.org"
    assert registered_domain("mx.isp.co.uk") == "isp.co.uk"
    assert registered_domain("co.uk") == "co.uk"
    assert registered_domain("127.0.0.1") == "127.0.0.1"


def test_google_workspace_domain_rolls_up_to_google(zones: ZoneResolver) -> None:
    route = resolve(["Workspace.TEST."], zones)["workspace.test"]
    assert route.status is RouteStatus.OK
    assert route.provider == "google"
    assert route.mx_hosts == (
        (1, "aspmx.l.google.com"),
        (10, "alt1.aspmx.l.google.com"),
        (20, "alt2.aspmx.l.google.com"),
    )
    assert route.expires_at == NOW + 3600
    assert route.direct_action() is DirectAction.DELIVER
    assert route.relay_group() == "google"


def test_office365_and_isp_grouping(zones: ZoneResolver) -> None:
    routes = resolve(["o365.test", "shop1.test", "shop2.test"], zones)
    assert routes["o365.test"].provider == "office365"
    # Two domains of one ISP share a lane.
    assert routes["shop1.test"].provider == routes["shop2.test"].provider == "isp.co.uk"


def test_null_mx_fails_without_connecting(zones: ZoneResolver) -> None:
    route = resolve(["nullmx.test"], zones)["nullmx.test"]
    assert route.status is RouteStatus.NULL_MX
    assert route.mx_hosts == ()
    assert route.direct_action() is DirectAction.FAIL
    assert route.failure_reason() == "notaccept"
    # Relay mode: grouping only, the relay decides.
    assert route.relay_group() == "nullmx.test"


def test_nxdomain_route_fails_as_hostunknown(zones: ZoneResolver) -> None:
    route = resolve(["nonexistent.example"], zones)["nonexistent.example"]
    assert route.status is RouteStatus.NXDOMAIN
    assert route.direct_action() is DirectAction.FAIL
    assert route.failure_reason() == "hostunknown"
    assert route.relay_group() == "nonexistent.example"


def test_no_mx_falls_back_to_address(zones: ZoneResolver) -> None:
    route = resolve(["aonly.test"], zones)["aonly.test"]
    assert route.status is RouteStatus.NO_MX_FALLBACK_A
    assert route.mx_hosts == ((0, "aonly.test"),)
    assert route.provider == "aonly.test"
    assert route.direct_action() is DirectAction.DELIVER


def test_domain_without_mx_or_address_fails_its_route(zones: ZoneResolver) -> None:
    route = resolve(["nothing.test"], zones)["nothing.test"]
    assert route.status is RouteStatus.NO_ADDRESS
    assert route.direct_action() is DirectAction.FAIL


def test_dns_timeout_defers_and_is_not_cached(zones: ZoneResolver) -> None:
    cache = InMemoryRouteCache()
    route = resolve(["slow.test"], zones, cache=cache)["slow.test"]
    assert route.status is RouteStatus.TIMEOUT
    assert route.direct_action() is DirectAction.DEFER
    assert route.relay_group() == "slow.test"  # relay: never delayed, grouped by name
    assert cache.get("slow.test", NOW) is None


class HangingResolver:
    """Answers MX for one name only after a long wait: exercises the per-lookup timeout."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0

    async def mx(self, name: str) -> MxAnswer:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(30 if name == "hang.example" else 0.01)
            return MxAnswer(((10, f"mx.{name}"),), 120)
        finally:
            self.active -= 1

    async def addresses(self, name: str) -> AddressAnswer:
        raise NoAnswer(name)


def test_async_resolver_timeout_ttl_and_concurrency() -> None:
    resolver = HangingResolver()
    domains = ["hang.example"] + [f"d{i}.example" for i in range(12)]
    routes = resolve(domains, resolver, timeout=0.2, concurrency=3)
    assert routes["hang.example"].status is RouteStatus.TIMEOUT
    assert routes["d0.example"].status is RouteStatus.OK
    # A 120 s TTL is raised to the floor so big campaigns do not re-resolve constantly.
    assert routes["d0.example"].expires_at == NOW + 300
    assert resolver.peak <= 3


class CountingResolver:
    """A sync resolver (the resolver.Resolver protocol) that counts MX questions."""

    def __init__(self) -> None:
        self.questions: list[str] = []

    def mx(self, name: str) -> list[tuple[int, str]]:
        self.questions.append(name)
        if name == "gone.example":
            raise NXDomain(name)
        if name == "dead.example":
            raise DnsTimeout(name)
        return [(5, "mx01.mail.icloud.com")]

    def a(self, name: str) -> list[str]:
        raise NoAnswer(name)

    def aaaa(self, name: str) -> list[str]:
        raise NoAnswer(name)

    def txt(self, name: str) -> list[str]:
        raise NoAnswer(name)

    def ptr(self, ip: str) -> list[str]:
        raise NoAnswer(ip)


def test_cache_is_used_until_expiry_and_domains_deduplicated() -> None:
    resolver = CountingResolver()
    cache = InMemoryRouteCache()
    first = asyncio.run(
        resolve_domains(["a.example", "A.example", "gone.example"], resolver, now=NOW, cache=cache)
    )
    assert first["a.example"].provider == "apple"
    assert sorted(resolver.questions) == ["a.example", "gone.example"]
    asyncio.run(resolve_domains(["a.example", "gone.example"], resolver, now=NOW + 60, cache=cache))
    assert len(resolver.questions) == 2  # both answers (negative too) came from the cache
    asyncio.run(resolve_domains(["a.example"], resolver, now=NOW + 3600, cache=cache))
    assert len(resolver.questions) == 3  # expired: asked again


def test_mx_override_short_circuits_dns() -> None:
    resolver = CountingResolver()
    routes = resolve(
        ["gmail.com", "example.org", "corp.example"],
        resolver,
        mx_override={
            "gmail.com": "127.0.0.1:2525",
            "example.org": "yahoo@127.0.0.2:2526",
            "corp.example": "[::1]:2527",
        },
    )
    assert resolver.questions == []
    gmail = routes["gmail.com"]
    assert (gmail.status, gmail.provider, gmail.hosts, gmail.port) == (
        RouteStatus.OVERRIDE,
        "google",
        ("127.0.0.1",),
        2525,
    )
    assert routes["example.org"].provider == "yahoo"
    assert routes["example.org"].port == 2526
    assert routes["corp.example"].hosts == ("::1",)
    assert routes["corp.example"].direct_action() is DirectAction.DELIVER


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("127.0.0.1:2525", (None, "127.0.0.1", 2525)),
        ("mx.example.com", (None, "mx.example.com", 25)),
        ("Google@127.0.0.1:2525", ("google", "127.0.0.1", 2525)),
        ("[::1]:2525", (None, "::1", 2525)),
    ],
)
def test_mx_override_parses_provider_host_and_port(
    value: str, parsed: tuple[str | None, str, int]
) -> None:
    assert parse_mx_override(value) == parsed


@pytest.mark.parametrize("value", ["127.0.0.1:0", "127.0.0.1:http", ":25", "[::1"])
def test_parse_mx_override_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        parse_mx_override(value)


def test_route_round_trips_through_a_cache_row(zones: ZoneResolver) -> None:
    for route in resolve(["workspace.test", "nullmx.test", "aonly.test"], zones).values():
        assert DomainRoute.from_row(route.to_row()) == route
