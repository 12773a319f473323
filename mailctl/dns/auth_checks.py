"""DKIM and DMARC checks: the published DKIM key against the configured private key (record
syntax, key match, key size), the DMARC record and policy, and DMARC alignment of DKIM and
SPF with the From domain.

The organisational domain is the last two labels of a name. This is wrong under multi-label
public suffixes (``example.co.uk`` gives ``co.uk``); a Public Suffix List would fix it. It
decides DMARC's fallback record and relaxed alignment only.

Must not import `checks` or `host_checks`; only `resolver`, `verdict` and message.dkim.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailctl.dns.resolver import Resolver, normalise_name
from mailctl.dns.verdict import Check, CheckId, Status
from mailctl.errors import DkimKeyError, DnsTimeout, NoAnswer, NXDomain
from mailctl.message.dkim import (
    DkimAlgorithm,
    DkimKeyConfig,
    load_private_key,
    public_key_txt,
)

__all__ = ["dkim_checks", "dmarc_checks", "org_domain"]


def org_domain(domain: str) -> str:
    """The organisational domain by the last-two-labels heuristic (see module docstring)."""
    labels = normalise_name(domain).split(".")
    return ".".join(labels[-2:])


def _aligned(a: str, b: str, mode: str) -> bool:
    a, b = normalise_name(a), normalise_name(b)
    return a == b if mode == "s" else org_domain(a) == org_domain(b)


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


def dkim_checks(
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


def dmarc_checks(
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
