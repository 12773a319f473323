"""DNS lookups: the `Resolver` protocol, `LiveResolver` (dnspython) and `ZoneResolver` (zone
files). Lookups raise the DNS errors of mailctl/errors.py.

Every DNS question mailctl asks goes through a `Resolver`: `LiveResolver` in production,
`ZoneResolver` in tests and rehearsals, which never uses the network. Lookups raise
`NXDomain`, `NoAnswer` or `DnsTimeout` (a temporary condition), never dnspython's own errors.

Must not import the checks (spf, auth_checks, host_checks, checks), providers or anything
above the dns package: they all build on this module.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.reversename
import dns.zone

from mailctl.errors import DnsError, DnsTimeout, InputError, NoAnswer, NXDomain

__all__ = [
    "LiveResolver",
    "Resolver",
    "ZoneResolver",
    "configured_resolver",
    "host_addresses",
    "normalise_name",
]


class Resolver(Protocol):
    """The DNS lookups mailctl makes. Names are returned lower-case, without the final dot."""

    def txt(self, name: str) -> list[str]: ...
    def a(self, name: str) -> list[str]: ...
    def aaaa(self, name: str) -> list[str]: ...
    def mx(self, name: str) -> list[tuple[int, str]]: ...
    def ptr(self, ip: str) -> list[str]: ...


def _name_text(name: dns.name.Name) -> str:
    # A null MX's exchange is the root; "" says "no host" more plainly than ".".
    return "" if name == dns.name.root else name.to_text(omit_final_dot=True).lower()


class _CountingResolver:
    """Shared by both resolvers: typed accessors over ``_query`` and a lookup counter."""

    def __init__(self) -> None:
        # Every question asked, cached or not: lets tests and `fast` measure the DNS cost.
        self.queries = 0

    def _query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> list[Any]:
        raise NotImplementedError

    def _ask(self, name: str | dns.name.Name, rdtype: dns.rdatatype.RdataType) -> list[Any]:
        self.queries += 1
        if isinstance(name, str):
            try:
                name = dns.name.from_text(name.rstrip(".") + ".")
            except dns.exception.DNSException as exc:
                raise NXDomain(f"{name!r} is not a valid domain name: {exc}") from None
        return self._query(name, rdtype)

    def txt(self, name: str) -> list[str]:
        return [
            b"".join(rdata.strings).decode("utf-8", "replace")
            for rdata in self._ask(name, dns.rdatatype.TXT)
        ]

    def a(self, name: str) -> list[str]:
        return [rdata.address for rdata in self._ask(name, dns.rdatatype.A)]

    def aaaa(self, name: str) -> list[str]:
        return [rdata.address for rdata in self._ask(name, dns.rdatatype.AAAA)]

    def mx(self, name: str) -> list[tuple[int, str]]:
        return sorted(
            (rdata.preference, _name_text(rdata.exchange))
            for rdata in self._ask(name, dns.rdatatype.MX)
        )

    def ptr(self, ip: str) -> list[str]:
        try:
            reverse = dns.reversename.from_address(ip)
        except (ValueError, dns.exception.SyntaxError):
            raise NXDomain(f"{ip!r} is not an IP address") from None
        return [_name_text(rdata.target) for rdata in self._ask(reverse, dns.rdatatype.PTR)]


R = TypeVar("R", bound=dns.resolver.BaseResolver)


def configured_resolver(kind: type[R], timeout: float, nameservers: Sequence[str] | None) -> R:
    """A dnspython resolver (sync or asyncio) with mailctl's timeouts."""
    try:
        resolver = kind(configure=nameservers is None)
    except dns.resolver.NoResolverConfiguration:
        raise DnsError("no DNS resolver is configured (/etc/resolv.conf)") from None
    if nameservers is not None:
        resolver.nameservers = list(nameservers)
    resolver.lifetime = timeout
    resolver.timeout = min(timeout, 2.0)  # per try, so one dead server is skipped
    return resolver


class LiveResolver(_CountingResolver):
    """Real DNS through dnspython, with a per-run cache (SPF trees repeat the same names)."""

    def __init__(self, *, timeout: float = 5.0, nameservers: Sequence[str] | None = None):
        super().__init__()
        self._resolver = configured_resolver(dns.resolver.Resolver, timeout, nameservers)
        self._cache: dict[tuple[dns.name.Name, int], list[Any] | DnsError] = {}

    def _query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> list[Any]:
        key = (name, int(rdtype))
        cached = self._cache.get(key)
        if cached is None:
            cached = self._resolve(name, rdtype)
            if not isinstance(cached, DnsTimeout):  # a timeout may clear up; don't keep it
                self._cache[key] = cached
        if isinstance(cached, DnsError):
            raise cached
        return cached

    def _resolve(
        self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> list[Any] | DnsError:
        label = f"{name.to_text(omit_final_dot=True)} {rdtype.name}"
        try:
            answer = self._resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            return NXDomain(f"{label}: no such domain")
        except dns.resolver.NoAnswer:
            return NoAnswer(f"{label}: no record")
        except dns.resolver.NoNameservers:
            return DnsTimeout(f"{label}: every name server failed (SERVFAIL)")
        except dns.exception.Timeout:
            return DnsTimeout(f"{label}: timed out")
        except dns.exception.DNSException as exc:
            return DnsTimeout(f"{label}: {exc}")
        return list(answer)


class ZoneResolver(_CountingResolver):
    """Answers from zone files, never the network: the resolver for tests and rehearsals.

    Names outside every zone are NXDOMAIN. CNAMEs are followed; wildcards are not supported.
    Names in ``timeouts`` raise `DnsTimeout`, to test how checks treat a dead server.
    """

    def __init__(self, zones: Iterable[dns.zone.Zone], *, timeouts: Iterable[str] = ()):
        super().__init__()
        # Longest origin first, so a child zone wins over its parent.
        self._zones = sorted(zones, key=lambda z: len(z.origin or dns.name.root), reverse=True)
        self._timeouts = {dns.name.from_text(n.rstrip(".") + ".") for n in timeouts}

    @classmethod
    def from_files(
        cls, paths: Iterable[str | Path], *, timeouts: Iterable[str] = ()
    ) -> ZoneResolver:
        """Load zone files; the origin is the file's ``$ORIGIN``, else its name minus ``.zone``."""
        zones = []
        for path in map(Path, paths):
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise InputError(f"zone file {path} cannot be read: {exc.strerror}") from None
            has_origin = re.search(r"^\$ORIGIN\s", text, re.MULTILINE) is not None
            origin = None if has_origin else path.name.removesuffix(".zone").rstrip(".") + "."
            try:
                zones.append(
                    dns.zone.from_text(
                        text,
                        origin=origin,
                        relativize=False,
                        check_origin=False,
                        filename=str(path),
                    )
                )
            except dns.exception.DNSException as exc:
                raise InputError(f"zone file {path} is invalid: {exc}") from None
        return cls(zones, timeouts=timeouts)

    def _query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> list[Any]:
        for _ in range(8):  # CNAME chain limit
            if name in self._timeouts:
                raise DnsTimeout(f"{name} {rdtype.name}: timed out")
            zone = next((z for z in self._zones if z.origin and name.is_subdomain(z.origin)), None)
            if zone is None:
                raise NXDomain(f"{name} {rdtype.name}: no such domain")
            node = zone.get_node(name)
            if node is None:
                if any(n != name and n.is_subdomain(name) for n in zone.nodes):
                    raise NoAnswer(f"{name} {rdtype.name}: no record")  # empty non-terminal
                raise NXDomain(f"{name} {rdtype.name}: no such domain")
            rdataset = node.get_rdataset(dns.rdataclass.IN, rdtype)
            if rdataset:
                return list(rdataset)
            cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if not cname:
                raise NoAnswer(f"{name} {rdtype.name}: no record")
            name = next(iter(cname)).target
        raise DnsTimeout(f"{name} {rdtype.name}: CNAME chain too long")


# --------------------------------------------------------------------------------------------
# Names and addresses, as the checks compare them


def normalise_name(domain: str) -> str:
    """Stripped, lower case, without the final dot (no IDNA conversion)."""
    return domain.strip().rstrip(".").lower()


def host_addresses(
    resolver: Resolver, name: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> list[str]:
    """The A or AAAA records of ``name`` (whichever matches the IP's family); [] if none."""
    lookup = resolver.a if ip.version == 4 else resolver.aaaa
    try:
        return lookup(name)
    except (NXDomain, NoAnswer):
        return []
