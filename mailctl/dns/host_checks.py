"""Checks of the sending hosts and the return path: PTR / forward-confirmed reverse DNS
(FCrDNS) and the HELO name of each sending IP, and the MX of the envelope (bounce) domain.

Must not import `checks`, `spf` or `auth_checks`; only `resolver` and `verdict`.
"""

from __future__ import annotations

import ipaddress
import re

from mailctl.dns.resolver import Resolver, host_addresses, normalise_name
from mailctl.dns.verdict import Check, CheckId, Status
from mailctl.errors import DnsTimeout, NoAnswer, NXDomain

__all__ = ["mx_check", "rdns_checks"]


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


def rdns_checks(
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
    confirmed = [n for n in names if ip in host_addresses(resolver, n, address)]
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
        helo = normalise_name(helo_name)
        if helo in confirmed:
            checks.append(Check(CheckId.RDNS_HELO, ip, Status.PASS, f"HELO {helo} is the PTR name"))
        elif ip in host_addresses(resolver, helo, address):
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


def mx_check(resolver: Resolver, domain: str, *, fast: bool) -> Check:
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
        hosts_v4 = host_addresses(resolver, domain, ipaddress.IPv4Address("0.0.0.0"))
        hosts_v6 = host_addresses(resolver, domain, ipaddress.IPv6Address("::"))
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
        if host_addresses(resolver, h, ipaddress.IPv4Address("0.0.0.0"))
        or host_addresses(resolver, h, ipaddress.IPv6Address("::"))
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
