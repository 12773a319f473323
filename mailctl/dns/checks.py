"""DNS preflight: SPF, DKIM, DMARC, reverse DNS (FCrDNS), bounce-domain MX, one-click unsubscribe.

`run_checks` answers two questions before mail leaves: will receivers authenticate it, and does
the setup meet the Gmail / Yahoo / Microsoft bulk-sender requirements (see PROVIDERS.md)?
Every failing check carries a one-line fix. All DNS goes through a `Resolver`: `LiveResolver`
(dnspython) in production, `ZoneResolver` (zone files) in tests, which never use the network.

Scope decisions:

- SPF is evaluated as RFC 7208 ``check_host`` for each sending IP (ip4, ip6, a, mx, ptr,
  include, redirect, all), counting DNS lookups (limit 10) and void lookups (limit 2); going
  over either is a permerror, reported as a fail. Macros and ``exists`` are counted but not
  evaluated: if an IP is authorised only through them the check warns instead of failing.
- SPF authorisation matters for DMARC only at the envelope (bounce) domain. The From domain's
  record, when the domains differ, is still checked (a broken record there hurts the domain),
  but IPs it does not authorise are a warning, not a failure.
- The organisational domain is the last two labels of a name. This is wrong under multi-label
  public suffixes (``example.co.uk`` gives ``co.uk``); a Public Suffix List would fix it. It
  decides DMARC's fallback record and relaxed alignment only.
- A check that could not finish because DNS timed out is a warning marked ``inconclusive``;
  requirements list it as unchecked rather than met or missing.

``fast=True`` is what ``mailctl send`` runs before a campaign's first message. Against zone
files nothing is slow; against live DNS the cost is serial round trips, so fast mode keeps the
checks that a campaign can break and skips those that are properties of the infrastructure
and cost several lookups each: the walk of the whole SPF include tree (the lookup limit is
still enforced along each IP's actual evaluation path), the SPF record of the From domain when
it differs from the envelope domain, the addresses of the bounce domain's MX hosts, and the
per-IP PTR / FCrDNS / HELO checks. Requirements then list FCrDNS as unchecked.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.reversename
import dns.zone
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailctl.errors import (
    DkimKeyError,
    DnsError,
    DnsTimeout,
    InputError,
    NoAnswer,
    NXDomain,
    UsageError,
)
from mailctl.message.dkim import (
    DkimAlgorithm,
    DkimKeyConfig,
    load_private_key,
    public_key_txt,
)

__all__ = [
    "Check",
    "CheckId",
    "CheckReport",
    "LiveResolver",
    "Provider",
    "RequirementStatus",
    "Resolver",
    "SpfEvaluation",
    "SpfResult",
    "Status",
    "ZoneResolver",
    "org_domain",
    "run_checks",
    "spf_check_host",
]

# --------------------------------------------------------------------------------------------
# Resolver seam


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
# Report types


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


class Provider(StrEnum):
    GMAIL = "gmail"
    YAHOO = "yahoo"
    MICROSOFT = "microsoft"


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
# Helpers


def _norm(domain: str) -> str:
    return domain.strip().rstrip(".").lower()


def org_domain(domain: str) -> str:
    """The organisational domain by the last-two-labels heuristic (see module docstring)."""
    labels = _norm(domain).split(".")
    return ".".join(labels[-2:])


def _aligned(a: str, b: str, mode: str) -> bool:
    a, b = _norm(a), _norm(b)
    return a == b if mode == "s" else org_domain(a) == org_domain(b)


def _addresses(
    resolver: Resolver, name: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> list[str]:
    """The A or AAAA records of ``name`` (whichever matches the IP's family); [] if none."""
    lookup = resolver.a if ip.version == 4 else resolver.aaaa
    try:
        return lookup(name)
    except (NXDomain, NoAnswer):
        return []


def _ip_mechanism(ip: str) -> str:
    return f"ip{ipaddress.ip_address(ip).version}:{ip}"


# --------------------------------------------------------------------------------------------
# SPF (RFC 7208)

SPF_LOOKUP_LIMIT = 10
SPF_VOID_LIMIT = 2


class SpfResult(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    PERMERROR = "permerror"
    TEMPERROR = "temperror"


_QUALIFIER_RESULT = {
    "+": SpfResult.PASS,
    "-": SpfResult.FAIL,
    "~": SpfResult.SOFTFAIL,
    "?": SpfResult.NEUTRAL,
}
_MECHANISMS = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
_LOOKUP_MECHANISMS = frozenset({"include", "a", "mx", "ptr", "exists"})
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.\-]*)=(.*)")
_TERM = re.compile(r"([+\-~?]?)([A-Za-z][A-Za-z0-9_.\-]*)(.*)")
_DOMAIN_CIDR = re.compile(r"(?::([^/]+))?(?:/(\d{1,3}))?(?://(\d{1,3}))?")
_DOMAIN_SPEC = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*\.?")
_MACRO = re.compile(r"%(?:\{[slodiphcrtv]\d*r?[.\-+,/_=]*\}|[%_\-])")


@dataclass(frozen=True)
class _Term:
    text: str
    qualifier: str
    name: str  # mechanism or modifier name, lower-case
    target: str | None = None  # domain-spec, IP or modifier value
    cidr4: int = 32
    cidr6: int = 128
    modifier: bool = False

    @property
    def has_macro(self) -> bool:
        return self.target is not None and "%" in self.target


@dataclass(frozen=True)
class _SpfRecord:
    text: str
    mechanisms: tuple[_Term, ...]
    redirect: str | None


class _SpfSyntaxError(ValueError):
    pass


def _check_domain_spec(spec: str, term: str) -> None:
    if "%" in spec:
        if "%" in _MACRO.sub("", spec):
            raise _SpfSyntaxError(f"bad macro in {term!r}")
    elif not _DOMAIN_SPEC.fullmatch(spec):
        raise _SpfSyntaxError(f"bad domain in {term!r}")


def _parse_spf(text: str) -> _SpfRecord:
    mechanisms: list[_Term] = []
    modifiers: dict[str, str] = {}
    for raw in text.split()[1:]:
        modifier = _MODIFIER.fullmatch(raw)
        if modifier:
            name = modifier.group(1).lower()
            if name in modifiers and name in {"redirect", "exp"}:
                raise _SpfSyntaxError(f"{name}= appears twice")
            if name in {"redirect", "exp"}:
                _check_domain_spec(modifier.group(2), raw)
            modifiers[name] = modifier.group(2)
            continue
        match = _TERM.fullmatch(raw)
        if not match or match.group(2).lower() not in _MECHANISMS:
            raise _SpfSyntaxError(f"unknown term {raw!r}")
        qualifier, name, rest = match.group(1) or "+", match.group(2).lower(), match.group(3)
        if name == "all":
            if rest:
                raise _SpfSyntaxError(f"bad term {raw!r}")
            mechanisms.append(_Term(raw, qualifier, name))
        elif name in {"ip4", "ip6"}:
            if not rest.startswith(":"):
                raise _SpfSyntaxError(f"{raw!r} needs an address")
            try:
                network = ipaddress.ip_network(rest[1:], strict=False)
            except ValueError:
                raise _SpfSyntaxError(f"bad address in {raw!r}") from None
            if network.version != int(name[-1]):
                raise _SpfSyntaxError(f"wrong address family in {raw!r}")
            mechanisms.append(_Term(raw, qualifier, name, str(network)))
        else:
            parts = _DOMAIN_CIDR.fullmatch(rest)
            if not parts or (name in {"include", "exists"} and not parts.group(1)):
                raise _SpfSyntaxError(f"bad term {raw!r}")
            target, cidr4, cidr6 = parts.groups()
            if (cidr4 or cidr6) and name not in {"a", "mx"}:
                raise _SpfSyntaxError(f"{name} takes no prefix length in {raw!r}")
            if target is not None:
                _check_domain_spec(target, raw)
            c4, c6 = int(cidr4 or 32), int(cidr6 or 128)
            if c4 > 32 or c6 > 128:
                raise _SpfSyntaxError(f"bad prefix length in {raw!r}")
            mechanisms.append(_Term(raw, qualifier, name, target, c4, c6))
    return _SpfRecord(text, tuple(mechanisms), modifiers.get("redirect"))


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


@dataclass(frozen=True)
class SpfEvaluation:
    """The outcome of ``check_host(ip, domain)``."""

    result: SpfResult
    lookups: int
    reason: str  # the matching mechanism, or why there is no match / an error
    # Mechanisms mailctl counted but could not evaluate (exists, macros): a non-pass result
    # might really be a pass.
    unevaluated: tuple[str, ...] = ()
    uses_ptr: bool = False


def _spf_records(resolver: Resolver, domain: str) -> list[str]:
    """The ``v=spf1`` TXT strings at ``domain``; [] if none. Raises DnsTimeout."""
    try:
        txts = resolver.txt(domain)
    except (NXDomain, NoAnswer):
        return []
    return [t for t in txts if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]


class _SpfEvaluator:
    """One ``check_host`` run: lookup and void-lookup counters are shared by its recursion."""

    def __init__(self, resolver: Resolver, ip: str):
        self.resolver = resolver
        self.ip = ipaddress.ip_address(ip)
        self.lookups = 0
        self.voids = 0
        self.unevaluated: list[str] = []
        self.uses_ptr = False

    def count(self, term: str) -> None:
        self.lookups += 1
        if self.lookups > SPF_LOOKUP_LIMIT:
            raise _PermError(f"more than {SPF_LOOKUP_LIMIT} DNS lookups (limit hit at {term})")

    def void(self, term: str) -> None:
        self.voids += 1
        if self.voids > SPF_VOID_LIMIT:
            raise _PermError(f"more than {SPF_VOID_LIMIT} void DNS lookups (at {term})")

    def record(self, domain: str) -> _SpfRecord | None:
        try:
            records = _spf_records(self.resolver, domain)
        except DnsTimeout as exc:
            raise _TempError(str(exc)) from None
        if len(records) > 1:
            raise _PermError(f"{domain} has {len(records)} SPF records")
        if not records:
            return None
        try:
            return _parse_spf(records[0])
        except _SpfSyntaxError as exc:
            raise _PermError(f"{domain}: {exc}") from None

    def check_host(self, domain: str) -> tuple[SpfResult, str]:
        record = self.record(domain)
        if record is None:
            return SpfResult.NONE, f"{domain} has no SPF record"
        for term in record.mechanisms:
            if self.matches(term, domain):
                return _QUALIFIER_RESULT[term.qualifier], f"{term.text} at {domain}"
        if record.redirect is not None and not any(t.name == "all" for t in record.mechanisms):
            self.count(f"redirect={record.redirect}")
            if "%" in record.redirect:
                self.unevaluated.append(f"redirect={record.redirect}")
                return SpfResult.NEUTRAL, f"redirect={record.redirect} has macros"
            result, reason = self.check_host(_norm(record.redirect))
            if result is SpfResult.NONE:
                raise _PermError(f"redirect={record.redirect}: {reason}")
            return result, reason
        return SpfResult.NEUTRAL, f"nothing matched at {domain} (default neutral)"

    def matches(self, term: _Term, domain: str) -> bool:
        name = term.name
        if name == "all":
            return True
        if name in {"ip4", "ip6"}:
            assert term.target is not None
            return self.ip in ipaddress.ip_network(term.target)
        self.count(term.text)
        if term.has_macro or name == "exists":
            self.unevaluated.append(term.text)
            return False
        target = _norm(term.target or domain)
        try:
            if name == "include":
                result, reason = self.check_host(target)
                if result is SpfResult.NONE:
                    raise _PermError(f"{term.text}: {reason}")
                return result is SpfResult.PASS
            if name == "a":
                return self._in_hosts([target], term)
            if name == "mx":
                hosts = [host for _, host in self.resolver.mx(target) if host]
                if len(hosts) > 10:
                    raise _PermError(f"{term.text}: more than 10 MX hosts")
                return self._in_hosts(hosts, term, primary=False)
            if name == "ptr":
                self.uses_ptr = True
                return self._ptr_matches(target)
        except (NXDomain, NoAnswer):
            self.void(term.text)
            return False
        except DnsTimeout as exc:
            raise _TempError(str(exc)) from None
        raise AssertionError(name)

    def _in_hosts(self, hosts: list[str], term: _Term, *, primary: bool = True) -> bool:
        prefix = term.cidr4 if self.ip.version == 4 else term.cidr6
        for host in hosts:
            lookup = self.resolver.a if self.ip.version == 4 else self.resolver.aaaa
            try:
                addresses = lookup(host)
            except (NXDomain, NoAnswer):
                if primary:
                    raise  # the mechanism's own lookup: a void lookup
                continue
            for address in addresses:
                if self.ip in ipaddress.ip_network(f"{address}/{prefix}", strict=False):
                    return True
        return False

    def _ptr_matches(self, target: str) -> bool:
        try:
            names = self.resolver.ptr(str(self.ip))[:10]
        except (NXDomain, NoAnswer):
            return False
        for name in names:
            if (name == target or name.endswith("." + target)) and str(self.ip) in _addresses(
                self.resolver, name, self.ip
            ):
                return True
        return False


def spf_check_host(resolver: Resolver, ip: str, domain: str) -> SpfEvaluation:
    """RFC 7208 ``check_host(ip, domain)``, within the limits described in the module doc."""
    evaluator = _SpfEvaluator(resolver, ip)
    try:
        result, reason = evaluator.check_host(_norm(domain))
    except _PermError as exc:
        result, reason = SpfResult.PERMERROR, str(exc)
    except _TempError as exc:
        result, reason = SpfResult.TEMPERROR, str(exc)
    return SpfEvaluation(
        result, evaluator.lookups, reason, tuple(evaluator.unevaluated), evaluator.uses_ptr
    )


@dataclass
class _SpfTree:
    """The whole include/redirect tree, walked regardless of IP (full mode)."""

    lookups: int = 0
    loop: str | None = None
    errors: list[str] = field(default_factory=list)
    all_qualifier: str | None = None  # of the effective top-level record (after redirects)
    uses_ptr: bool = False


def _walk_spf(resolver: Resolver, domain: str) -> _SpfTree:
    tree = _SpfTree()

    def walk(name: str, stack: tuple[str, ...], top: bool) -> None:
        if name in stack:
            tree.loop = tree.loop or " → ".join((*stack, name))
            return
        if tree.lookups > 50:  # far past the limit already; stop walking a runaway tree
            return
        try:
            records = _spf_records(resolver, name)
        except DnsTimeout as exc:
            tree.errors.append(str(exc))
            return
        if len(records) != 1:
            if not top:
                tree.errors.append(f"{name} has {len(records) or 'no'} SPF records")
            return
        try:
            record = _parse_spf(records[0])
        except _SpfSyntaxError as exc:
            tree.errors.append(f"{name}: {exc}")
            return
        has_all = False
        for term in record.mechanisms:
            if term.name in _LOOKUP_MECHANISMS:
                tree.lookups += 1
            tree.uses_ptr |= term.name == "ptr"
            if term.name == "all":
                has_all = True
                if top:
                    tree.all_qualifier = term.qualifier
            if term.name == "include" and term.target and not term.has_macro:
                walk(_norm(term.target), (*stack, name), False)
        if record.redirect and not has_all:
            tree.lookups += 1
            if "%" not in record.redirect:
                walk(_norm(record.redirect), (*stack, name), top)

    walk(domain, (), True)
    return tree


def _spf_checks(
    resolver: Resolver, domain: str, ips: Sequence[str], *, envelope: bool, fast: bool
) -> list[Check]:
    wanted = " ".join(_ip_mechanism(ip) for ip in ips)
    suggested = f'Publish "v=spf1 {wanted} -all" at {domain}'
    role = "envelope (bounce) domain" if envelope else "From domain"
    try:
        records = _spf_records(resolver, domain)
    except DnsTimeout as exc:
        return [
            Check(
                CheckId.SPF_RECORD,
                domain,
                Status.WARN,
                f"could not look up SPF: {exc}",
                "Check that the domain's name servers answer",
                inconclusive=True,
            )
        ]
    if not records:
        status = Status.FAIL if envelope else Status.WARN
        return [
            Check(CheckId.SPF_RECORD, domain, status, f"no SPF record at the {role}", suggested)
        ]
    if len(records) > 1:
        return [
            Check(
                CheckId.SPF_RECORD,
                domain,
                Status.FAIL,
                f"{len(records)} SPF records; receivers treat that as a permerror",
                f"Merge the SPF records at {domain} into one",
            )
        ]
    try:
        _parse_spf(records[0])
    except _SpfSyntaxError as exc:
        return [
            Check(
                CheckId.SPF_RECORD,
                domain,
                Status.FAIL,
                f"invalid SPF record: {exc}",
                f"Correct the SPF record at {domain} ({exc})",
            )
        ]
    checks: list[Check] = []
    record_check = Check(CheckId.SPF_RECORD, domain, Status.PASS, f"one SPF record: {records[0]}")

    evaluations = {ip: spf_check_host(resolver, ip, domain) for ip in ips}
    uses_ptr = any(e.uses_ptr for e in evaluations.values())
    tree: _SpfTree | None = None
    if not fast:
        tree = _walk_spf(resolver, domain)
        uses_ptr |= tree.uses_ptr
        if tree.loop:
            checks.append(
                Check(
                    CheckId.SPF_LOOKUPS,
                    domain,
                    Status.FAIL,
                    f"include loop: {tree.loop}",
                    f"Remove the include that loops back ({tree.loop})",
                )
            )
        elif tree.lookups > SPF_LOOKUP_LIMIT:
            checks.append(
                Check(
                    CheckId.SPF_LOOKUPS,
                    domain,
                    Status.FAIL,
                    f"{tree.lookups} DNS lookups; more than {SPF_LOOKUP_LIMIT} is a permerror",
                    f"Flatten includes at {domain} into ip4:/ip6: terms to need at most "
                    f"{SPF_LOOKUP_LIMIT} lookups",
                )
            )
        elif tree.errors:
            checks.append(
                Check(
                    CheckId.SPF_LOOKUPS,
                    domain,
                    Status.FAIL,
                    "; ".join(tree.errors),
                    f"Repair or remove the broken include under {domain}",
                )
            )
        else:
            checks.append(
                Check(
                    CheckId.SPF_LOOKUPS,
                    domain,
                    Status.PASS,
                    f"{tree.lookups} of {SPF_LOOKUP_LIMIT} DNS lookups",
                )
            )
    if uses_ptr:
        record_check = Check(
            CheckId.SPF_RECORD,
            domain,
            Status.WARN,
            f"uses the ptr mechanism, which RFC 7208 deprecates: {records[0]}",
            f"Replace ptr at {domain} with ip4:/ip6: terms",
        )
    checks.insert(0, record_check)

    checks.append(_spf_authorises(domain, evaluations, envelope=envelope))
    qualifier = tree.all_qualifier if tree is not None else _top_all(resolver, domain)
    checks.append(_spf_all(domain, qualifier))
    return checks


def _top_all(resolver: Resolver, domain: str) -> str | None:
    """The ``all`` qualifier of the record at ``domain``, following redirects (fast mode)."""
    seen: set[str] = set()
    while domain not in seen:
        seen.add(domain)
        try:
            records = _spf_records(resolver, domain)
            record = _parse_spf(records[0]) if len(records) == 1 else None
        except (DnsTimeout, _SpfSyntaxError):
            return None
        if record is None:
            return None
        for term in record.mechanisms:
            if term.name == "all":
                return term.qualifier
        if not record.redirect or "%" in record.redirect:
            return None
        domain = _norm(record.redirect)
    return None


def _spf_authorises(
    domain: str, evaluations: Mapping[str, SpfEvaluation], *, envelope: bool
) -> Check:
    lines = [f"{ip}: {e.result} ({e.reason})" for ip, e in evaluations.items()]
    detail = "; ".join(lines) or "no sending IPs configured"
    results = {e.result for e in evaluations.values()}
    missing = [ip for ip, e in evaluations.items() if e.result is not SpfResult.PASS]
    if SpfResult.PERMERROR in results:
        return Check(
            CheckId.SPF_AUTHORISES,
            domain,
            Status.FAIL,
            detail,
            f"Fix the SPF permerror at {domain}",
        )
    if SpfResult.TEMPERROR in results:
        return Check(
            CheckId.SPF_AUTHORISES,
            domain,
            Status.WARN,
            detail,
            "Check that the SPF domains' name servers answer",
            inconclusive=True,
        )
    if not missing:
        return Check(CheckId.SPF_AUTHORISES, domain, Status.PASS, detail)
    fix = (
        f'Add "{" ".join(_ip_mechanism(ip) for ip in missing)}" to the SPF record at '
        f"{domain}, before its all"
    )
    if any(evaluations[ip].unevaluated for ip in missing):
        return Check(
            CheckId.SPF_AUTHORISES,
            domain,
            Status.WARN,
            detail + "; exists/macro terms were not evaluated and might authorise them",
            fix,
        )
    if not envelope:
        detail += "; DMARC uses the envelope domain's SPF, so this only matters elsewhere"
    return Check(
        CheckId.SPF_AUTHORISES, domain, Status.FAIL if envelope else Status.WARN, detail, fix
    )


def _spf_all(domain: str, qualifier: str | None) -> Check:
    if qualifier in {"-", "~"}:
        return Check(CheckId.SPF_ALL, domain, Status.PASS, f"ends in {qualifier}all")
    if qualifier == "+":
        return Check(
            CheckId.SPF_ALL,
            domain,
            Status.FAIL,
            "+all authorises every host on the internet to send as this domain",
            f"Replace +all with -all (or ~all) in the SPF record at {domain}",
        )
    detail = (
        "?all: unlisted hosts get neutral"
        if qualifier == "?"
        else ("no all mechanism: unlisted hosts get neutral")
    )
    return Check(
        CheckId.SPF_ALL,
        domain,
        Status.WARN,
        detail,
        f"End the SPF record at {domain} with -all (or ~all)",
    )


# --------------------------------------------------------------------------------------------
# DKIM key records


def _tags(text: str) -> dict[str, str]:
    """RFC 6376 3.2 tag=value list; raises ValueError on a malformed or repeated tag."""
    tags: dict[str, str] = {}
    for spec in text.split(";"):
        if not spec.strip():
            continue
        name, sep, value = spec.partition("=")
        name = name.strip()
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise ValueError(f"malformed tag {spec.strip()!r}")
        if name in tags:
            raise ValueError(f"tag {name}= appears twice")
        tags[name] = value.strip()
    return tags


def _public_key_from_record(tags: Mapping[str, str]) -> rsa.RSAPublicKey | ed25519.Ed25519PublicKey:
    data = base64.b64decode(re.sub(r"\s+", "", tags["p"]), validate=True)
    if tags.get("k", "rsa") == "ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(data)
    public = serialization.load_der_public_key(data)
    if not isinstance(public, rsa.RSAPublicKey):
        raise ValueError("p= is not an RSA key")
    return public


def _same_key(a: object, b: object) -> bool:
    if isinstance(a, rsa.RSAPublicKey) and isinstance(b, rsa.RSAPublicKey):
        return a.public_numbers() == b.public_numbers()
    if isinstance(a, ed25519.Ed25519PublicKey) and isinstance(b, ed25519.Ed25519PublicKey):
        raw = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return a.public_bytes(*raw) == b.public_bytes(*raw)
    return False


def _dkim_checks(
    resolver: Resolver, key: DkimKeyConfig, all_keys: Sequence[DkimKeyConfig]
) -> list[Check]:
    name = key.record_name
    try:
        private_key = load_private_key(key)
    except DkimKeyError as exc:
        return [
            Check(
                CheckId.DKIM_KEY_MATCH,
                name,
                Status.FAIL,
                str(exc),
                f"Configure a readable {key.algorithm} PEM private key for {name}",
            )
        ]
    wanted = public_key_txt(private_key)
    publish = f'Publish "{wanted}" at {name}'
    try:
        txts = resolver.txt(name)
    except (NXDomain, NoAnswer):
        return [Check(CheckId.DKIM_RECORD, name, Status.FAIL, "no DKIM key record", publish)]
    except DnsTimeout as exc:
        return [
            Check(
                CheckId.DKIM_RECORD,
                name,
                Status.WARN,
                f"could not look up: {exc}",
                "Check that the domain's name servers answer",
                inconclusive=True,
            )
        ]
    if len(txts) != 1:
        return [
            Check(
                CheckId.DKIM_RECORD,
                name,
                Status.FAIL,
                f"{len(txts)} TXT records; verifiers may pick any of them",
                f'Keep only one TXT record at {name}: "{wanted}"',
            )
        ]
    try:
        tags = _tags(txts[0])
        problems = []
        if "v" in tags and (tags["v"] != "DKIM1" or not txts[0].lstrip().startswith("v")):
            problems.append("v= must be DKIM1 and come first")
        algorithm = tags.get("k", "rsa")
        if algorithm not in {"rsa", "ed25519"}:
            problems.append(f"unknown key type k={algorithm}")
        if "p" not in tags:
            problems.append("no p= tag")
        elif not tags["p"]:
            problems.append("p= is empty: the key is revoked")
        if "h" in tags and "sha256" not in [h.strip() for h in tags["h"].split(":")]:
            problems.append(f"h={tags['h']} does not allow sha256")
        if tags.get("s", "*") not in {"*", "email"} and "email" not in tags["s"].split(":"):
            problems.append(f"s={tags['s']} does not cover email")
        if problems:
            raise ValueError("; ".join(problems))
        published = _public_key_from_record(tags)
    except (ValueError, binascii.Error, UnsupportedAlgorithm) as exc:
        return [
            Check(CheckId.DKIM_RECORD, name, Status.FAIL, f"invalid key record: {exc}", publish)
        ]
    checks = []
    key_type = "ed25519" if key.algorithm is DkimAlgorithm.ED25519_SHA256 else "rsa"
    if tags.get("k", "rsa") != key_type:
        checks.append(
            Check(
                CheckId.DKIM_RECORD,
                name,
                Status.FAIL,
                f"record is k={tags.get('k', 'rsa')} but the key is {key_type}",
                publish,
            )
        )
    elif "y" in tags.get("t", "").split(":"):
        checks.append(
            Check(
                CheckId.DKIM_RECORD,
                name,
                Status.WARN,
                "t=y: testing mode, receivers may ignore the signature",
                f"Remove t=y from the record at {name}",
            )
        )
    else:
        checks.append(Check(CheckId.DKIM_RECORD, name, Status.PASS, "key record parses"))

    if _same_key(published, private_key.public_key()):
        checks.append(
            Check(
                CheckId.DKIM_KEY_MATCH, name, Status.PASS, "published key matches the private key"
            )
        )
    else:
        checks.append(
            Check(
                CheckId.DKIM_KEY_MATCH,
                name,
                Status.FAIL,
                "published key does not match the configured private key",
                publish,
            )
        )
    checks.append(_dkim_key_size(name, published, key, all_keys))
    return checks


def _dkim_key_size(
    name: str, published: object, key: DkimKeyConfig, all_keys: Sequence[DkimKeyConfig]
) -> Check:
    new_key = "Generate a 2048-bit RSA key, publish it under a new selector and switch to it"
    if isinstance(published, rsa.RSAPublicKey):
        bits = published.key_size
        if bits < 1024:
            return Check(
                CheckId.DKIM_KEY_SIZE,
                name,
                Status.FAIL,
                f"{bits}-bit RSA key: receivers ignore keys under 1024 bits",
                new_key,
            )
        if bits < 2048:
            return Check(
                CheckId.DKIM_KEY_SIZE,
                name,
                Status.WARN,
                f"{bits}-bit RSA key: 2048 bits is recommended",
                new_key,
            )
        return Check(CheckId.DKIM_KEY_SIZE, name, Status.PASS, f"{bits}-bit RSA key")
    if any(k.domain == key.domain and k.algorithm is DkimAlgorithm.RSA_SHA256 for k in all_keys):
        return Check(CheckId.DKIM_KEY_SIZE, name, Status.PASS, "ed25519 key, next to an RSA key")
    return Check(
        CheckId.DKIM_KEY_SIZE,
        name,
        Status.WARN,
        "ed25519 only: not every receiver verifies it (RFC 8463)",
        f"Also sign with a 2048-bit RSA key for {key.domain}",
    )


# --------------------------------------------------------------------------------------------
# DMARC (RFC 7489)


@dataclass(frozen=True)
class _Dmarc:
    domain: str  # where the record was found
    text: str
    policy: str  # effective for the From domain: sp= when inherited from the org domain
    adkim: str
    aspf: str
    pct: int
    rua: str | None


def _dmarc_lookup(resolver: Resolver, from_domain: str) -> tuple[list[str], str]:
    """The ``v=DMARC1`` records for ``from_domain`` (or its org domain) and where they were."""
    candidates = [from_domain]
    if org_domain(from_domain) != from_domain:
        candidates.append(org_domain(from_domain))
    for domain in candidates:
        try:
            txts = resolver.txt(f"_dmarc.{domain}")
        except (NXDomain, NoAnswer):
            continue
        records = [t for t in txts if re.match(r"v\s*=\s*DMARC1\s*(;|$)", t)]
        if records:
            return records, domain
    return [], from_domain


def _parse_dmarc(text: str, found_at: str, from_domain: str) -> _Dmarc:
    tags = _tags(text)
    policies = {"none", "quarantine", "reject"}
    if "p" not in tags or tags["p"].lower() not in policies:
        raise ValueError("p= must be none, quarantine or reject")
    for tag in ("sp",):
        if tag in tags and tags[tag].lower() not in policies:
            raise ValueError(f"{tag}= must be none, quarantine or reject")
    for tag in ("adkim", "aspf"):
        if tags.get(tag, "r").lower() not in {"r", "s"}:
            raise ValueError(f"{tag}= must be r or s")
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        raise ValueError("pct= must be a number") from None
    if not 0 <= pct <= 100:
        raise ValueError("pct= must be 0 to 100")
    policy = tags["p"].lower()
    if found_at != from_domain and "sp" in tags:
        policy = tags["sp"].lower()
    return _Dmarc(
        found_at,
        text,
        policy,
        tags.get("adkim", "r").lower(),
        tags.get("aspf", "r").lower(),
        pct,
        tags.get("rua") or None,
    )


def _dmarc_checks(
    resolver: Resolver,
    from_domain: str,
    envelope_domain: str,
    keys: Sequence[DkimKeyConfig],
    dkim_ok: Mapping[DkimKeyConfig, bool],
    spf_ok: bool,
) -> list[Check]:
    subject = f"_dmarc.{from_domain}"
    publish = f'Publish "v=DMARC1; p=none; rua=mailto:dmarc-reports@{from_domain}" at {subject}'
    checks: list[Check] = []
    dmarc: _Dmarc | None = None
    try:
        records, found_at = _dmarc_lookup(resolver, from_domain)
    except DnsTimeout as exc:
        checks.append(
            Check(
                CheckId.DMARC_RECORD,
                subject,
                Status.WARN,
                f"could not look up: {exc}",
                "Check that the domain's name servers answer",
                inconclusive=True,
            )
        )
        records, found_at = [], from_domain
    else:
        where = f"_dmarc.{found_at}"
        if not records:
            checks.append(
                Check(
                    CheckId.DMARC_RECORD,
                    subject,
                    Status.FAIL,
                    "no DMARC record (nor at the organisational domain)",
                    publish,
                )
            )
        elif len(records) > 1:
            checks.append(
                Check(
                    CheckId.DMARC_RECORD,
                    where,
                    Status.FAIL,
                    f"{len(records)} DMARC records; receivers ignore them all",
                    f"Keep one DMARC record at {where}",
                )
            )
        else:
            try:
                dmarc = _parse_dmarc(records[0], found_at, from_domain)
            except ValueError as exc:
                checks.append(
                    Check(
                        CheckId.DMARC_RECORD,
                        where,
                        Status.FAIL,
                        f"invalid DMARC record: {exc}",
                        f"Correct the DMARC record at {where} ({exc})",
                    )
                )
            else:
                inherited = (
                    " (inherited from the organisational domain)"
                    if (found_at != from_domain)
                    else ""
                )
                checks.append(
                    Check(CheckId.DMARC_RECORD, where, Status.PASS, f"{records[0]}{inherited}")
                )
                checks.append(_dmarc_policy(where, dmarc))

    adkim = dmarc.adkim if dmarc else "r"
    aspf = dmarc.aspf if dmarc else "r"
    mode = {"r": "relaxed", "s": "strict"}
    dkim_aligned = [k for k in keys if _aligned(k.domain, from_domain, adkim)]
    dkim_passing = [k for k in dkim_aligned if dkim_ok.get(k)]
    spf_aligned = _aligned(envelope_domain, from_domain, aspf)
    detail = (
        f"DKIM ({mode[adkim]}): "
        + (
            ", ".join(
                _dkim_alignment_note(k, k in dkim_aligned, dkim_ok.get(k, False)) for k in keys
            )
            or "no keys"
        )
        + f"; SPF ({mode[aspf]}): {envelope_domain} "
        + ("aligned" if spf_aligned else "not aligned")
        + ("" if spf_ok else " (SPF does not pass)")
        + f" with From {from_domain}"
    )
    if dkim_passing:
        checks.append(Check(CheckId.DMARC_ALIGNMENT, from_domain, Status.PASS, detail))
    elif spf_aligned and spf_ok:
        checks.append(
            Check(
                CheckId.DMARC_ALIGNMENT,
                from_domain,
                Status.WARN,
                detail + "; only SPF aligns, and forwarding breaks SPF",
                f"Sign with a DKIM key for {from_domain} (d={from_domain})",
            )
        )
    else:
        fix = (
            f"Repair the DKIM key for {dkim_aligned[0].domain}"
            if dkim_aligned
            else f"Sign with a DKIM key for {from_domain} (d={from_domain})"
        )
        checks.append(Check(CheckId.DMARC_ALIGNMENT, from_domain, Status.FAIL, detail, fix))
    return checks


def _dkim_alignment_note(key: DkimKeyConfig, aligned: bool, passing: bool) -> str:
    note = f"d={key.domain} (s={key.selector}) {'aligned' if aligned else 'not aligned'}"
    return note if passing else note + " (key check failed)"


def _dmarc_policy(where: str, dmarc: _Dmarc) -> Check:
    notes = []
    if dmarc.policy == "none":
        notes.append(
            "p=none meets the bulk-sender minimum; enforcement "
            "(quarantine or reject) is recommended once reports are clean"
        )
    if dmarc.pct < 100:
        notes.append(f"pct={dmarc.pct}: the policy applies to part of the mail only")
    if dmarc.rua is None:
        notes.append("no rua=: you get no aggregate reports")
    if not notes:
        return Check(CheckId.DMARC_POLICY, where, Status.PASS, f"p={dmarc.policy}")
    fix = (
        f"Move {where} to p=quarantine, then p=reject, once reports show only your mail"
        if dmarc.policy == "none"
        else f"Set pct=100 and a rua= address at {where}"
    )
    return Check(CheckId.DMARC_POLICY, where, Status.WARN, "; ".join(notes), fix)


# --------------------------------------------------------------------------------------------
# Reverse DNS, MX, unsubscribe

_GENERIC_PTR = re.compile(
    r"(^|[.\-])(dyn|dynamic|dhcp|pool|dsl|adsl|cable|dialup|ppp|client)"
    r"([.\-\d]|$)"
)


def _looks_generic(name: str, ip: str) -> bool:
    if _GENERIC_PTR.search(name):
        return True
    if "." in ip:  # IPv4: the octets spelled into the name, forwards or backwards
        octets = ip.split(".")
        return any(sep.join(o) in name for o in (octets, octets[::-1]) for sep in "-.")
    return False


def _rdns_checks(
    resolver: Resolver, ip: str, helo_name: str | None, envelope_domain: str
) -> list[Check]:
    address = ipaddress.ip_address(ip)
    wanted = helo_name or f"mail.{envelope_domain}"
    try:
        names = resolver.ptr(ip)
    except (NXDomain, NoAnswer):
        names = []
    except DnsTimeout as exc:
        return [
            Check(
                CheckId.RDNS_FCRDNS,
                ip,
                Status.WARN,
                f"could not look up PTR: {exc}",
                "Check the reverse zone's name servers",
                inconclusive=True,
            )
        ]
    checks: list[Check] = []
    confirmed = [n for n in names if ip in _addresses(resolver, n, address)]
    record = "A" if address.version == 4 else "AAAA"
    if not names:
        checks.append(
            Check(
                CheckId.RDNS_FCRDNS,
                ip,
                Status.FAIL,
                "no PTR record",
                f"Ask the owner of {ip} (your hosting provider) to set its PTR to {wanted}",
            )
        )
    elif not confirmed:
        checks.append(
            Check(
                CheckId.RDNS_FCRDNS,
                ip,
                Status.FAIL,
                f"PTR {', '.join(names)} does not resolve back to {ip}",
                f'Publish "{record} {ip}" at {names[0]}',
            )
        )
    elif _looks_generic(confirmed[0], ip):
        checks.append(
            Check(
                CheckId.RDNS_FCRDNS,
                ip,
                Status.WARN,
                f"PTR {confirmed[0]} is forward-confirmed but looks generic (dynamic/pool)",
                f"Set the PTR of {ip} to a name of your own, such as {wanted}",
            )
        )
    else:
        checks.append(
            Check(CheckId.RDNS_FCRDNS, ip, Status.PASS, f"PTR {confirmed[0]} resolves back to {ip}")
        )
    if helo_name is not None:
        helo = _norm(helo_name)
        if helo in confirmed:
            checks.append(Check(CheckId.RDNS_HELO, ip, Status.PASS, f"HELO {helo} is the PTR name"))
        elif ip in _addresses(resolver, helo, address):
            checks.append(
                Check(
                    CheckId.RDNS_HELO,
                    ip,
                    Status.WARN,
                    f"HELO {helo} resolves to {ip} but the PTR is {', '.join(names) or 'missing'}",
                    f"Use HELO {confirmed[0]}" if confirmed else f"Set the PTR of {ip} to {helo}",
                )
            )
        else:
            fix = (
                f"Use HELO {confirmed[0]} for {ip}"
                if confirmed
                else f'Publish "{record} {ip}" at {helo} and set the PTR of {ip} to {helo}'
            )
            checks.append(
                Check(
                    CheckId.RDNS_HELO,
                    ip,
                    Status.FAIL,
                    f"HELO {helo} neither matches the PTR nor resolves to {ip}",
                    fix,
                )
            )
    return checks


def _mx_check(resolver: Resolver, domain: str, *, fast: bool) -> Check:
    publish = f'Publish "MX 10 <host that receives your bounces>." at {domain}'
    try:
        records = resolver.mx(domain)
    except NXDomain:
        return Check(
            CheckId.MX_BOUNCE,
            domain,
            Status.FAIL,
            "the envelope domain does not exist; bounces cannot come back",
            publish,
        )
    except NoAnswer:
        records = []
    except DnsTimeout as exc:
        return Check(
            CheckId.MX_BOUNCE,
            domain,
            Status.WARN,
            f"could not look up MX: {exc}",
            "Check that the domain's name servers answer",
            inconclusive=True,
        )
    if any(not host for _, host in records):
        return Check(
            CheckId.MX_BOUNCE,
            domain,
            Status.FAIL,
            "null MX (RFC 7505): the domain accepts no mail, so bounces are lost and "
            "receivers may reject it as an envelope sender",
            f"Replace the null MX at {domain} with an MX for the host that receives bounces",
        )
    if not records:
        hosts_v4 = _addresses(resolver, domain, ipaddress.IPv4Address("0.0.0.0"))
        hosts_v6 = _addresses(resolver, domain, ipaddress.IPv6Address("::"))
        if hosts_v4 or hosts_v6:
            return Check(
                CheckId.MX_BOUNCE,
                domain,
                Status.WARN,
                "no MX: bounces go to the domain's own address (implicit MX)",
                publish,
            )
        return Check(
            CheckId.MX_BOUNCE,
            domain,
            Status.FAIL,
            "no MX and no address: bounces cannot come back",
            publish,
        )
    hosts = [host for _, host in records]
    if fast:
        return Check(CheckId.MX_BOUNCE, domain, Status.PASS, f"MX {', '.join(hosts)}")
    reachable = [
        h
        for h in hosts
        if _addresses(resolver, h, ipaddress.IPv4Address("0.0.0.0"))
        or _addresses(resolver, h, ipaddress.IPv6Address("::"))
    ]
    if not reachable:
        return Check(
            CheckId.MX_BOUNCE,
            domain,
            Status.FAIL,
            f"MX hosts {', '.join(hosts)} have no address",
            f"Publish A records for the MX hosts of {domain}",
        )
    if len(reachable) < len(hosts):
        unresolved = ", ".join(h for h in hosts if h not in reachable)
        return Check(
            CheckId.MX_BOUNCE,
            domain,
            Status.WARN,
            f"MX hosts without an address: {unresolved}",
            f"Remove or fix the MX records of {domain} naming {unresolved}",
        )
    return Check(CheckId.MX_BOUNCE, domain, Status.PASS, f"MX {', '.join(hosts)}")


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
    """Run the preflight checks and judge the bulk-sender requirements (module doc: scope)."""
    from_domain, envelope_domain = _norm(from_domain), _norm(envelope_domain)
    ips = []
    for ip in sending_ips:
        try:
            ips.append(str(ipaddress.ip_address(ip.strip())))
        except ValueError:
            raise UsageError(f"sending IP {ip!r} is not an IP address") from None

    checks: list[Check] = []
    checks += _spf_checks(resolver, envelope_domain, ips, envelope=True, fast=fast)
    if from_domain != envelope_domain and not fast:
        checks += _spf_checks(resolver, from_domain, ips, envelope=False, fast=fast)
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
        key_checks = _dkim_checks(resolver, key, dkim_keys)
        dkim_ok[key] = all(c.status is not Status.FAIL and not c.inconclusive for c in key_checks)
        checks += key_checks

    checks += _dmarc_checks(resolver, from_domain, envelope_domain, dkim_keys, dkim_ok, spf_ok)
    if not fast:
        for ip in ips:
            checks += _rdns_checks(resolver, ip, helo_name, envelope_domain)
    checks.append(_mx_check(resolver, envelope_domain, fast=fast))
    if marketing:
        checks.append(_unsubscribe_check(unsubscribe_url, unsubscribe_mailto))
    return CheckReport(tuple(checks), _requirements(checks, envelope_domain, marketing))
