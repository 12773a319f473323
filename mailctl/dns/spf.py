"""SPF (RFC 7208): the ``check_host`` evaluator, with its 10-lookup and 2-void-lookup limits,
and the ``spf.*`` preflight checks built on it.

SPF is evaluated as RFC 7208 ``check_host`` for each sending IP (ip4, ip6, a, mx, ptr,
include, redirect, all), recursively through include and redirect, counting DNS lookups
(limit 10) and void lookups (limit 2) across the whole recursion; going over either is a
permerror, reported as a fail. Macros and ``exists`` are counted but not evaluated: if an IP
is authorised only through them the check warns instead of failing.

SPF authorisation matters for DMARC only at the envelope (bounce) domain. The From domain's
record, when the domains differ, is still checked (a broken record there hurts the domain),
but IPs it does not authorise are a warning, not a failure.

In full mode the whole include tree is walked once regardless of IP (loops, total lookups,
broken includes); ``fast`` mode skips that walk, and the lookup limit is still enforced along
each IP's actual evaluation path.

Must not import `checks`, `auth_checks` or `host_checks`; only `resolver` and `verdict`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from mailctl.dns.resolver import Resolver, host_addresses, normalise_name
from mailctl.dns.verdict import Check, CheckId, Status
from mailctl.errors import DnsTimeout, NoAnswer, NXDomain

__all__ = [
    "SPF_LOOKUP_LIMIT",
    "SPF_VOID_LIMIT",
    "SpfEvaluation",
    "SpfResult",
    "spf_check_host",
    "spf_checks",
]


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
            result, reason = self.check_host(normalise_name(record.redirect))
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
        target = normalise_name(term.target or domain)
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
            if (name == target or name.endswith("." + target)) and str(self.ip) in host_addresses(
                self.resolver, name, self.ip
            ):
                return True
        return False


def spf_check_host(resolver: Resolver, ip: str, domain: str) -> SpfEvaluation:
    """RFC 7208 ``check_host(ip, domain)``, within the limits described in the module doc."""
    evaluator = _SpfEvaluator(resolver, ip)
    try:
        result, reason = evaluator.check_host(normalise_name(domain))
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
                walk(normalise_name(term.target), (*stack, name), False)
        if record.redirect and not has_all:
            tree.lookups += 1
            if "%" not in record.redirect:
                walk(normalise_name(record.redirect), (*stack, name), top)

    walk(domain, (), True)
    return tree


def _ip_mechanism(ip: str) -> str:
    return f"ip{ipaddress.ip_address(ip).version}:{ip}"


def spf_checks(
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
        domain = normalise_name(record.redirect)
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
