"""Recipient domain -> MX hosts -> mailbox provider ("MX rollup"), cached with the record's TTL.

A company domain hosted on Google Workspace must get Gmail's limits, so domains are grouped by
the MX hosts that serve them, not by their names (see PROVIDERS.md). Known hosting suffixes map
to a provider name (``google``, ``microsoft``, ``office365``, ``yahoo``, ``apple``,
``mimecast``); any other domain groups under its primary MX host's registered domain, so that
every domain hosted by one ISP shares one lane.

What a route means depends on the transport:

* **Direct-to-MX**: the route is acted on. ``ok`` / ``no_mx_fallback_a`` deliver to
  ``mx_hosts`` in preference order; ``null_mx`` (RFC 7505), ``nxdomain`` and ``no_address``
  fail those recipients without connecting; ``timeout`` defers them (a temporary condition).
  See `DomainRoute.direct_action`.
* **Relay (smarthost)**: DNS is only for grouping, so that lanes and warm-up caps per provider
  still hold through the relay. A failed lookup (any status but ``ok`` / ``no_mx_fallback_a``)
  never fails or delays a recipient: the domain groups under its own name (`relay_group`) and
  the relay decides. A profile may switch lookups off (`unresolved_route`), with the same
  grouping.

Lookups never hit the network in tests: the resolver is injected (`resolver.ZoneResolver` or
any object with the `resolver.Resolver` methods), and ``mx_override`` maps a domain to a
``host:port`` without any DNS at all.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from mailctl.config.profiles import parse_mx_override
from mailctl.errors import DnsError, DnsTimeout, NoAnswer, NXDomain

if TYPE_CHECKING:
    # dnspython (and resolver.py, built on it) is a heavy import that only live lookups
    # need: a relay or sandbox send without DNS never loads it (cron pays every import).
    import dns.rdatatype
    import dns.resolver

    from mailctl.dns.resolver import Resolver

__all__ = [
    "AddressAnswer",
    "AsyncMxResolver",
    "DirectAction",
    "DnsPythonMxResolver",
    "DomainRoute",
    "InMemoryRouteCache",
    "MxAnswer",
    "RouteCache",
    "RouteStatus",
    "ThreadedMxResolver",
    "normalise_domain",
    "provider_for_mx_hosts",
    "registered_domain",
    "resolve_domains",
    "route_for_override",
    "unresolved_route",
]

# Suffix -> provider. Checked in order, so the two Outlook families are told apart before any
# broader rule could catch them.
PROVIDER_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".google.com", "google"),
    (".googlemail.com", "google"),
    (".olc.protection.outlook.com", "microsoft"),
    (".mail.protection.outlook.com", "office365"),
    (".mx.microsoft", "office365"),
    (".yahoodns.net", "yahoo"),
    (".icloud.com", "apple"),
    (".mimecast.com", "mimecast"),
)

# Well-known consumer domains. Used only where there is no MX answer to go by (mx_override
# without an explicit provider), so that a rehearsal of gmail.com against a simulated server
# still lands in the google lane.
KNOWN_DOMAINS: Mapping[str, str] = {
    "gmail.com": "google",
    "googlemail.com": "google",
    "outlook.com": "microsoft",
    "hotmail.com": "microsoft",
    "live.com": "microsoft",
    "msn.com": "microsoft",
    "yahoo.com": "yahoo",
    "aol.com": "yahoo",
    "ymail.com": "yahoo",
    "icloud.com": "apple",
    "me.com": "apple",
    "mac.com": "apple",
}

# Two-label public suffixes common among mail hosts. A full Public Suffix List would be exact;
# this small list covers the cases that matter for grouping (mx.isp.co.uk -> isp.co.uk, not
# co.uk, which would lump every British ISP into one lane).
TWO_LEVEL_SUFFIXES: frozenset[str] = frozenset(
    {
        "co.uk", "org.uk", "ac.uk", "gov.uk", "ltd.uk", "plc.uk", "net.uk", "me.uk",
        "com.au", "net.au", "org.au", "edu.au", "gov.au",
        "co.nz", "org.nz", "net.nz",
        "co.jp", "ne.jp", "or.jp", "ac.jp",
        "co.za", "org.za",
        "co.in", "net.in", "org.in",
        "co.kr", "or.kr",
        "co.il", "org.il",
        "com.br", "net.br", "org.br",
        "com.cn", "net.cn", "org.cn",
        "com.mx", "com.ar", "com.tr", "com.tw", "com.sg", "com.hk", "com.my", "com.pl",
        "com.ua", "com.ru", "com.es", "com.co", "com.pe", "com.ph", "com.vn",
    }
)  # fmt: skip

DEFAULT_TTL = 3600  # when the resolver does not report a TTL (the sync Resolver protocol)
NEGATIVE_TTL = 3600  # NXDOMAIN / null MX / no address: re-checked hourly
MIN_TTL = 300  # a 60 s TTL should not make a 10,000-domain campaign re-resolve every minute
MAX_TTL = 86400


class RouteStatus(StrEnum):
    OK = "ok"
    NULL_MX = "null_mx"  # RFC 7505 "0 .": the domain accepts no mail
    NXDOMAIN = "nxdomain"
    NO_MX_FALLBACK_A = "no_mx_fallback_a"  # RFC 5321 implicit MX: the domain's own address
    NO_ADDRESS = "no_address"  # neither MX nor A/AAAA: nowhere to deliver
    TIMEOUT = "timeout"  # no answer in time or SERVFAIL: temporary
    OVERRIDE = "override"  # mx_override, no DNS asked
    SKIPPED = "skipped"  # the profile switched lookups off


class DirectAction(StrEnum):
    """What direct-to-MX delivery does with a route."""

    DELIVER = "deliver"
    FAIL = "fail"  # fail the recipients without connecting (hard, suppress per classify)
    DEFER = "defer"  # try again later; a DNS timeout is not proof of anything


_DELIVERABLE = frozenset({RouteStatus.OK, RouteStatus.NO_MX_FALLBACK_A, RouteStatus.OVERRIDE})


@dataclass(frozen=True)
class DomainRoute:
    """Where mail for one recipient domain goes, and which provider lane it belongs to."""

    domain: str
    provider: str
    mx_hosts: tuple[tuple[int, str], ...]  # (preference, host), best first
    expires_at: float
    status: RouteStatus
    port: int = 25
    detail: str = ""

    @property
    def hosts(self) -> tuple[str, ...]:
        """MX host names in the order to try them."""
        return tuple(host for _, host in self.mx_hosts)

    def relay_group(self) -> str:
        """The lane provider in relay mode: the rollup when DNS answered, else the domain.

        Relay mode uses DNS only to group; a failed lookup must not fail or delay anyone.
        """
        return self.provider if self.status in _DELIVERABLE else self.domain

    def direct_action(self) -> DirectAction:
        """What direct-to-MX delivery does with the recipients of this domain."""
        if self.status in _DELIVERABLE:
            return DirectAction.DELIVER
        if self.status in (RouteStatus.TIMEOUT, RouteStatus.SKIPPED):
            return DirectAction.DEFER
        return DirectAction.FAIL

    def to_row(self) -> dict[str, Any]:
        """Flat values for the ``mx_cache`` table (MX hosts as JSON text)."""
        return {
            "domain": self.domain,
            "provider": self.provider,
            "mx_hosts": json.dumps([list(pair) for pair in self.mx_hosts]),
            "port": self.port,
            "status": self.status.value,
            "detail": self.detail,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> DomainRoute:
        """The inverse of `to_row` (accepts a sqlite3.Row or any mapping)."""
        return cls(
            domain=row["domain"],
            provider=row["provider"],
            mx_hosts=tuple((int(pref), str(host)) for pref, host in json.loads(row["mx_hosts"])),
            expires_at=float(row["expires_at"]),
            status=RouteStatus(row["status"]),
            port=int(row["port"]),
            detail=row["detail"] or "",
        )

    def failure_reason(self) -> str | None:
        """The Sisimai reason for recipients this route cannot reach (direct mode)."""
        return {
            RouteStatus.NULL_MX: "notaccept",
            RouteStatus.NXDOMAIN: "hostunknown",
            RouteStatus.NO_ADDRESS: "hostunknown",
            RouteStatus.TIMEOUT: "networkerror",
            RouteStatus.SKIPPED: "networkerror",
        }.get(self.status)


# --------------------------------------------------------------------------------------------
# Provider rollup


def normalise_domain(domain: str) -> str:
    """Lower case, no final dot, IDNA (A-label) form, so that caches and lanes agree."""
    text = domain.strip().rstrip(".").lower()
    try:
        return text.encode("idna").decode("ascii")
    except UnicodeError:
        return text  # invalid IDNA: keep the text; DNS will answer NXDOMAIN for it


def _is_ip_literal(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def registered_domain(host: str) -> str:
    """The registered domain of a host: the last two labels, three under a known 2-level
    public suffix (``mx1.isp.co.uk`` -> ``isp.co.uk``). IP literals are returned as they are."""
    host = normalise_domain(host)
    if _is_ip_literal(host):
        return host
    labels = [label for label in host.split(".") if label]
    if len(labels) <= 2:
        return ".".join(labels)
    if ".".join(labels[-2:]) in TWO_LEVEL_SUFFIXES:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def provider_for_host(host: str) -> str:
    """The provider of one MX host: a known suffix, else the host's registered domain."""
    name = "." + normalise_domain(host)
    for suffix, provider in PROVIDER_SUFFIXES:
        if name.endswith(suffix):
            return provider
    return registered_domain(host)


def provider_for_mx_hosts(hosts: Iterable[str]) -> str:
    """The provider of a domain from its MX hosts, given best preference first.

    The primary host decides: it receives nearly all the mail, and a backup MX elsewhere
    (a filtering service, the ISP) does not change whose limits apply. Empty input gives "".
    """
    for host in hosts:
        if host:
            return provider_for_host(host)
    return ""


# --------------------------------------------------------------------------------------------
# mx_override and lookups switched off


def route_for_override(domain: str, value: str, now: float) -> DomainRoute:
    """A route from ``mx_override``: no DNS. The provider is the one named in the value, else
    the well-known owner of the domain (gmail.com -> google), else the host's rollup."""
    domain = normalise_domain(domain)
    provider, host, port = parse_mx_override(value)
    if provider is None:
        provider = KNOWN_DOMAINS.get(domain) or provider_for_host(host)
    # Overrides are configuration, not DNS: they never expire on their own.
    return DomainRoute(
        domain, provider, ((0, host),), float("inf"), RouteStatus.OVERRIDE, port, "mx_override"
    )


def unresolved_route(domain: str, now: float, detail: str = "lookups off") -> DomainRoute:
    """A route for a profile that switched DNS off (relay only): grouped under the domain."""
    domain = normalise_domain(domain)
    return DomainRoute(domain, domain, (), now, RouteStatus.SKIPPED, 25, detail)


# --------------------------------------------------------------------------------------------
# Resolvers


@dataclass(frozen=True)
class MxAnswer:
    records: tuple[tuple[int, str], ...]  # (preference, host); host "" is the root (null MX)
    ttl: int | None


@dataclass(frozen=True)
class AddressAnswer:
    addresses: tuple[str, ...]
    ttl: int | None


class AsyncMxResolver(Protocol):
    """The lookups MX rollup needs, asynchronously and with TTLs.

    Raise `errors.NXDomain`, `errors.NoAnswer` or `errors.DnsTimeout` as the sync
    `resolver.Resolver` does.
    """

    async def mx(self, name: str) -> MxAnswer: ...
    async def addresses(self, name: str) -> AddressAnswer: ...


class ThreadedMxResolver:
    """Runs a synchronous `resolver.Resolver` (ZoneResolver, LiveResolver) in worker threads.

    That protocol carries no TTLs, so every answer gets ``default_ttl``.
    """

    def __init__(self, resolver: Resolver, *, default_ttl: int = DEFAULT_TTL) -> None:
        self.resolver = resolver
        self.default_ttl = default_ttl

    async def mx(self, name: str) -> MxAnswer:
        records = await asyncio.to_thread(self.resolver.mx, name)
        return MxAnswer(tuple(sorted(records)), self.default_ttl)

    async def addresses(self, name: str) -> AddressAnswer:
        return AddressAnswer(
            tuple(await _addresses(name, self.resolver.a, self.resolver.aaaa)), self.default_ttl
        )


async def _addresses(name: str, a: object, aaaa: object) -> list[str]:
    """A then AAAA; NoAnswer on one family is fine if the other answers."""
    found: list[str] = []
    missing: DnsError | None = None
    for lookup in (a, aaaa):
        try:
            found.extend(await asyncio.to_thread(lookup, name))  # type: ignore[arg-type]
        except NoAnswer as exc:
            missing = exc
    if not found:
        raise missing or NoAnswer(f"{name}: no address")
    return found


class DnsPythonMxResolver:
    """Live DNS through dnspython's asyncio resolver, with the answers' TTLs."""

    def __init__(self, *, timeout: float = 5.0, nameservers: Sequence[str] | None = None) -> None:
        import dns.asyncresolver

        from mailctl.dns.resolver import configured_resolver

        self._resolver = configured_resolver(dns.asyncresolver.Resolver, timeout, nameservers)

    async def _resolve(self, name: str, rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer:
        import dns.exception
        import dns.resolver

        label = f"{name} {rdtype.name}"
        try:
            return await self._resolver.resolve(name.rstrip(".") + ".", rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            raise NXDomain(f"{label}: no such domain") from None
        except dns.resolver.NoAnswer:
            raise NoAnswer(f"{label}: no record") from None
        except dns.resolver.NoNameservers:
            raise DnsTimeout(f"{label}: every name server failed (SERVFAIL)") from None
        except dns.exception.Timeout:
            raise DnsTimeout(f"{label}: timed out") from None
        except dns.exception.DNSException as exc:
            raise DnsTimeout(f"{label}: {exc}") from None

    async def mx(self, name: str) -> MxAnswer:
        import dns.name
        import dns.rdatatype

        answer = await self._resolve(name, dns.rdatatype.MX)
        records = sorted(
            (
                rdata.preference,
                ""
                if rdata.exchange == dns.name.root
                else rdata.exchange.to_text(omit_final_dot=True).lower(),
            )
            for rdata in answer
        )
        return MxAnswer(tuple(records), answer.rrset.ttl if answer.rrset else None)

    async def addresses(self, name: str) -> AddressAnswer:
        import dns.rdatatype

        found: list[str] = []
        ttls: list[int] = []
        missing: NoAnswer | None = None
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                answer = await self._resolve(name, rdtype)
            except NoAnswer as exc:
                missing = exc
                continue
            found.extend(rdata.address for rdata in answer)
            if answer.rrset:
                ttls.append(answer.rrset.ttl)
        if not found:
            raise missing or NoAnswer(f"{name}: no address")
        return AddressAnswer(tuple(found), min(ttls) if ttls else None)


def _as_async(resolver: Resolver | AsyncMxResolver) -> AsyncMxResolver:
    if inspect.iscoroutinefunction(getattr(resolver, "mx", None)) and hasattr(
        resolver, "addresses"
    ):
        return resolver  # type: ignore[return-value]
    return ThreadedMxResolver(resolver)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Cache


class RouteCache(Protocol):
    """Where routes are kept between lookups (the lead backs it with the `mx_cache` table)."""

    def get(self, domain: str, now: float) -> DomainRoute | None:
        """The cached route, or None when there is none or it expired at or before ``now``."""
        ...

    def put(self, route: DomainRoute) -> None: ...


class InMemoryRouteCache:
    """A dict-backed `RouteCache` for tests and single runs."""

    def __init__(self) -> None:
        self.routes: dict[str, DomainRoute] = {}

    def get(self, domain: str, now: float) -> DomainRoute | None:
        route = self.routes.get(domain)
        return route if route is not None and route.expires_at > now else None

    def put(self, route: DomainRoute) -> None:
        # Timeouts are not knowledge: keeping them would defer a domain after DNS recovered.
        if route.status is not RouteStatus.TIMEOUT:
            self.routes[route.domain] = route


# --------------------------------------------------------------------------------------------
# Resolution


def _ttl(ttl: int | None) -> int:
    return max(MIN_TTL, min(MAX_TTL, ttl if ttl is not None else DEFAULT_TTL))


async def _lookup(domain: str, resolver: AsyncMxResolver, now: float) -> DomainRoute:
    try:
        answer = await resolver.mx(domain)
    except NXDomain as exc:
        return DomainRoute(
            domain, domain, (), now + NEGATIVE_TTL, RouteStatus.NXDOMAIN, 25, str(exc)
        )
    except NoAnswer:
        answer = None
    if answer is not None and answer.records:
        hosts = [(pref, host) for pref, host in answer.records if host]
        if not hosts:
            # RFC 7505: "0 ." alone says the domain accepts no mail. (A null MX next to real
            # ones is a misconfiguration; the real ones are used.)
            return DomainRoute(
                domain, domain, (), now + _ttl(answer.ttl), RouteStatus.NULL_MX, 25, "null MX"
            )
        hosts.sort()
        provider = provider_for_mx_hosts(host for _, host in hosts)
        return DomainRoute(domain, provider, tuple(hosts), now + _ttl(answer.ttl), RouteStatus.OK)
    # RFC 5321 section 5.1: no MX records -> the domain itself is the implicit MX.
    try:
        addresses = await resolver.addresses(domain)
    except (NoAnswer, NXDomain) as exc:
        return DomainRoute(
            domain, domain, (), now + NEGATIVE_TTL, RouteStatus.NO_ADDRESS, 25, str(exc)
        )
    return DomainRoute(
        domain,
        provider_for_mx_hosts([domain]),
        ((0, domain),),
        now + _ttl(addresses.ttl),
        RouteStatus.NO_MX_FALLBACK_A,
        25,
        "implicit MX",
    )


async def resolve_domains(
    domains: Iterable[str],
    resolver: Resolver | AsyncMxResolver,
    *,
    concurrency: int = 20,
    timeout: float = 5.0,
    now: float,
    cache: RouteCache | None = None,
    mx_override: Mapping[str, str] | None = None,
) -> dict[str, DomainRoute]:
    """Resolve each distinct domain once; keys are the normalised domains (`normalise_domain`).

    ``mx_override`` wins over the cache and DNS. Cached, unexpired routes are used as they are;
    fresh answers are put into ``cache``. At most ``concurrency`` lookups run at a time, each
    bounded by ``timeout`` seconds (status ``timeout``). ``resolver`` is either a sync
    `resolver.Resolver` (run in threads) or an `AsyncMxResolver`.

    The statuses mean different things in direct and relay mode: see the module docstring.
    """
    overrides = {normalise_domain(k): v for k, v in (mx_override or {}).items()}
    wanted = list(dict.fromkeys(normalise_domain(d) for d in domains if d and d.strip()))
    routes: dict[str, DomainRoute] = {}
    todo: list[str] = []
    for domain in wanted:
        if domain in overrides:
            routes[domain] = route_for_override(domain, overrides[domain], now)
            continue
        cached = cache.get(domain, now) if cache is not None else None
        if cached is not None:
            routes[domain] = cached
        else:
            todo.append(domain)
    if not todo:
        return routes
    lookups = _as_async(resolver)
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(domain: str) -> DomainRoute:
        async with gate:
            try:
                async with asyncio.timeout(timeout):
                    return await _lookup(domain, lookups, now)
            except (TimeoutError, DnsTimeout) as exc:  # DnsTimeout is a TimeoutError too
                detail = str(exc) or f"no answer within {timeout:g}s"
                return DomainRoute(domain, domain, (), now, RouteStatus.TIMEOUT, 25, detail)

    for route in await asyncio.gather(*(one(d) for d in todo)):
        routes[route.domain] = route
        if cache is not None:
            cache.put(route)
    return routes
