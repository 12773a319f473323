"""Addresses: syntax normalisation and the one canonical key every comparison uses.

`normalise_address` checks and tidies an address as written (the local part keeps its case:
that is what goes in the `To:` header). `address_key` is the identity used wherever two
addresses are compared — import dedup, suppression (exact and ``*@domain``), bounce
correlation, the check before delivery: the lower-cased local part and the lower-cased,
IDNA-encoded domain. Providers treat local parts case-insensitively in practice, and an
unsubscribed person must never get mail because of how they typed their address.

Pure: imports only mailctl.errors and idna. Must not import the store or anything above it.
"""

from __future__ import annotations

import re

import idna

from mailctl.errors import InvalidAddress
from mailctl.untrusted import printable

# RFC 5321 dot-atom local part (ASCII); quoted local parts are accepted too.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL = re.compile(
    rf"^(?:{_ATOM}(?:\.{_ATOM})*|\"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*\")$"
)
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_TLD = re.compile(r"^(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})$")
# The common case in one match: dot-atom local part, lower-case ASCII domain.
_FAST = re.compile(
    rf"{_ATOM}(?:\.{_ATOM})*@(?:[a-z0-9](?:[a-z0-9-]{{0,61}}[a-z0-9])?\.)+[a-z]{{2,63}}"
)


def normalise_address(raw: str) -> tuple[str, str]:
    """Trim, lower-case and IDNA-encode the domain; return (address, domain) or raise.

    Syntax only: no DNS. The local part keeps its case (RFC 5321 says it may matter).
    """
    address = raw.strip()
    if _FAST.fullmatch(address) and len(address) <= 254:
        local, _, domain = address.rpartition("@")
        if len(local) <= 64:
            return address, domain
    if not address:
        raise InvalidAddress("empty address", address=address)
    shown = printable(address)  # the raw cell may hold line breaks or escapes
    if "@" not in address:
        raise InvalidAddress(f"'{shown}' has no @", address=address)
    local, _, domain = address.rpartition("@")
    if not local:
        raise InvalidAddress(f"'{shown}' has an empty local part", address=address)
    if len(local) > 64:
        raise InvalidAddress(f"'{shown}': local part longer than 64 characters", address=address)
    if not _LOCAL.match(local):
        if not local.isascii():
            raise InvalidAddress(
                f"'{shown}': non-ASCII local part (needs SMTPUTF8)", address=address
            )
        raise InvalidAddress(f"'{shown}': invalid local part", address=address)
    domain = domain.strip().rstrip(".").lower()
    if not domain:
        raise InvalidAddress(f"'{shown}' has an empty domain", address=address)
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise InvalidAddress(
                f"'{shown}': invalid international domain ({exc})", address=address
            ) from None
    labels = domain.split(".")
    if len(labels) < 2:
        raise InvalidAddress(f"'{shown}': domain '{printable(domain)}' has no dot", address=address)
    if not all(_LABEL.match(label) for label in labels) or not _TLD.match(labels[-1]):
        raise InvalidAddress(f"'{shown}': invalid domain '{printable(domain)}'", address=address)
    address = f"{local}@{domain}"
    if len(address) > 254:
        raise InvalidAddress(f"'{printable(address)}': longer than 254 characters", address=address)
    return address, domain


def _domain_key(domain: str) -> str:
    domain = domain.strip().rstrip(".").lower()
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError:
            pass  # not a valid international name: compared as written, lower-cased
    return domain.lower()


def address_key(address: str) -> str:
    """The canonical key of an address, or of a ``*@domain`` suppression target.

    Lower-cased local part + ``@`` + lower-cased IDNA domain. Total (never raises): an
    address that does not parse is keyed by its trimmed, lower-cased text, so a hostile
    report still matches what it names and nothing else. For any address
    `normalise_address` returns (ASCII by construction), the key is its ``lower()``.
    """
    address = address.strip()
    local, at, domain = address.rpartition("@")
    if not at:
        return address.lower()
    return f"{local.lower()}@{_domain_key(domain)}"


def suppression_key(value: str) -> str:
    """A suppression target as typed (an address or ``*@domain``), validated and keyed."""
    value = value.strip()
    if value.startswith("*@"):
        _, domain = normalise_address("x@" + value[2:])
        return "*@" + domain
    return address_key(normalise_address(value)[0])
