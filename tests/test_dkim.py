"""DKIM keys and signing: every signature is checked with dkimpy's verifier."""

from __future__ import annotations

import re
from pathlib import Path

import dkim as dkimpy  # dkimpy; mailctl's own module is mailctl.dkim
import dns.zone
import pytest

from mailctl.dns.resolver import Resolver, ZoneResolver
from mailctl.errors import DkimError, DkimKeyError, NoAnswer, NXDomain
from mailctl.message.dkim import (
    DkimAlgorithm,
    DkimKeyConfig,
    DkimSigner,
    generate_keypair,
    load_key,
    relaxed_body,
    txt_record,
)

KEYS = Path(__file__).parent / "data" / "zones" / "keys"
ZONES = Path(__file__).parent / "data" / "zones"

MESSAGE = (
    b"From: News <news@example.com>\r\n"
    b"To: alice@example.org\r\n"
    b"Subject:  November   news\r\n"
    b"\tfolded onto a second line\r\n"
    b"Date: Mon, 04 Nov 2024 10:00:00 +0000\r\n"
    b"Message-ID: <1.abc@example.com>\r\n"
    b"List-Unsubscribe: <https://example.com/u/abc>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Campaign: november\r\n"
    b"\r\n"
    b"Hello  Alice, \t\r\n"
    b"\r\n"
    b"Our news.\r\n"
    b"\r\n\r\n"
)


def dnsfunc(resolver: Resolver):
    """dkimpy's TXT lookup hook, answered by our resolver."""

    def get_txt(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            return resolver.txt(name.decode().rstrip("."))[0].encode()
        except (NXDomain, NoAnswer):
            return None

    return get_txt


def zone_with(origin: str, *lines: str) -> ZoneResolver:
    text = "$TTL 300\n@ IN SOA ns hostmaster 1 3600 600 86400 300\n@ IN NS ns\n"
    text += "\n".join(lines) + "\n"
    return ZoneResolver([dns.zone.from_text(text, origin=origin, relativize=False)])


@pytest.fixture(scope="module")
def rsa_key() -> DkimKeyConfig:
    return DkimKeyConfig("s1", "example.com", (KEYS / "rsa2048.pem").read_bytes())


@pytest.fixture(scope="module")
def zones() -> ZoneResolver:
    return ZoneResolver.from_files(sorted(ZONES.glob("*.zone")))


def test_keygen_publish_sign_verify_and_tamper() -> None:
    pem, txt = generate_keypair(2048)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert txt.startswith("v=DKIM1; k=rsa; p=")
    line = txt_record("nov", "example.com", txt)
    resolver = zone_with("example.com.", line)
    signer = DkimSigner(DkimKeyConfig("nov", "example.com", pem))

    signed = signer.sign(MESSAGE) + MESSAGE
    assert dkimpy.verify(signed, dnsfunc=dnsfunc(resolver))
    assert not dkimpy.verify(signed.replace(b"Our news", b"Our NEWS"), dnsfunc=dnsfunc(resolver))
    assert not dkimpy.verify(signed.replace(b"u/abc", b"u/evil"), dnsfunc=dnsfunc(resolver)), (
        "List-Unsubscribe must be covered (RFC 8058)"
    )
    # A second From added below the signed one must break it (From is oversigned).
    extra_from = signed.replace(b"\r\n\r\n", b"\r\nFrom: evil@example.net\r\n\r\n", 1)
    assert not dkimpy.verify(extra_from, dnsfunc=dnsfunc(resolver))


def test_rsa_signature_header_is_folded_and_signs_headers_in_order(rsa_key: DkimKeyConfig) -> None:
    header = DkimSigner(rsa_key, clock=lambda: 1_700_000_000).sign(MESSAGE)
    assert header.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    assert header.endswith(b"\r\n") and not header.endswith(b"\r\n\r\n")
    assert all(len(line) <= 78 for line in header.split(b"\r\n"))
    unfolded = header.replace(b"\r\n", b"")
    assert b" t=1700000000;" in unfolded
    match = re.search(rb"h=([^;]+);", unfolded)
    assert match is not None
    h = match.group(1).replace(b" ", b"")
    # Only present headers, in the configured order; From once more than it occurs.
    assert h == (
        b"from:from:to:subject:date:message-id:list-unsubscribe:list-unsubscribe-post:"
        b"mime-version:content-type"
    )


def test_verifies_from_the_test_zone_and_through_a_cname(zones: ZoneResolver) -> None:
    pem = (KEYS / "rsa2048.pem").read_bytes()
    for selector in ("s1", "esp"):  # esp._domainkey.example.com is a CNAME
        signer = DkimSigner(DkimKeyConfig(selector, "example.com", pem))
        assert dkimpy.verify(signer.sign(MESSAGE) + MESSAGE, dnsfunc=dnsfunc(zones))


def test_wrong_published_key_fails_verification(zones: ZoneResolver) -> None:
    signer = DkimSigner(DkimKeyConfig("s1", "dkimbad.test", (KEYS / "rsa2048.pem").read_bytes()))
    assert not dkimpy.verify(signer.sign(MESSAGE) + MESSAGE, dnsfunc=dnsfunc(zones))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\r\n",
        b"no final newline",
        b"trailing  \t",
        b"a\r\n\r\n\r\n",
        b" \r\n \r\n",
        b"tabs\t\tand  spaces \r\n\tindented\r\n",
        b"x" * 5000 + b"\r\n",
        b"bare\rcr\r",
    ],
    ids=range(9),
)
def test_body_canonicalisation_matches_dkimpy(rsa_key: DkimKeyConfig, body: bytes) -> None:
    resolver = zone_with("example.com.", txt_record("s1", "example.com", _txt(rsa_key)))
    message = b"From: a@example.com\r\nSubject: x\r\n\r\n" + body
    assert dkimpy.verify(DkimSigner(rsa_key).sign(message) + message, dnsfunc=dnsfunc(resolver))


def test_lf_line_endings_and_repeated_headers(rsa_key: DkimKeyConfig) -> None:
    resolver = zone_with("example.com.", txt_record("s1", "example.com", _txt(rsa_key)))
    message = b"From: a@example.com\nTo: b@example.org\nTo: c@example.org\nSubject: x\n\nbody\n"
    header = DkimSigner(rsa_key).sign(message)
    assert b"to:to" in header.replace(b"\r\n ", b"")
    assert dkimpy.verify(header + message, dnsfunc=dnsfunc(resolver))


def test_relaxed_body_canonicalisation_follows_rfc_6376() -> None:
    assert relaxed_body(b"") == b""
    assert relaxed_body(b"\r\n\r\n") == b""
    assert relaxed_body(b" C \r\nD \t E\r\n\r\n\r\n") == b" C\r\nD E\r\n"  # RFC 6376 3.4.5


def test_ed25519_sign_and_verify() -> None:
    pytest.importorskip("nacl", reason="dkimpy verifies ed25519 only with pynacl")
    pem, txt = generate_keypair(algorithm=DkimAlgorithm.ED25519_SHA256)
    assert txt.startswith("v=DKIM1; k=ed25519; p=")
    resolver = zone_with("example.com.", txt_record("e1", "example.com", txt))
    signer = DkimSigner(DkimKeyConfig("e1", "example.com", pem, DkimAlgorithm.ED25519_SHA256))
    signed = signer.sign(MESSAGE) + MESSAGE
    assert dkimpy.verify(signed, dnsfunc=dnsfunc(resolver))
    assert not dkimpy.verify(signed.replace(b"Our news", b"Our NEWS"), dnsfunc=dnsfunc(resolver))


def test_ed25519_signature_is_64_bytes_in_base64() -> None:
    pem, _ = generate_keypair(algorithm=DkimAlgorithm.ED25519_SHA256)
    header = DkimSigner(DkimKeyConfig("e1", "example.com", pem, DkimAlgorithm.ED25519_SHA256)).sign(
        MESSAGE
    )
    assert b"a=ed25519-sha256;" in header
    b_value = header.replace(b"\r\n ", b"").split(b"b=")[-1].strip()
    assert len(b_value) == 88  # 64-byte signature in base64


def test_txt_record_splits_long_values_for_zone_files() -> None:
    _, txt = generate_keypair(4096)
    line = txt_record("s1", "example.com", txt, ttl=300)
    assert line.startswith("s1._domainkey.example.com. 300 IN TXT ")
    strings = re.findall(r'"([^"]*)"', line)
    assert len(strings) > 2 and all(len(s) <= 255 for s in strings)
    assert zone_with("example.com.", line).txt("s1._domainkey.example.com") == [txt]


def test_generate_refuses_weak_keys() -> None:
    with pytest.raises(DkimError, match="1024"):
        generate_keypair(512)


def test_message_without_signable_headers(rsa_key: DkimKeyConfig) -> None:
    with pytest.raises(DkimError):
        DkimSigner(rsa_key).sign(b"X-Only: this\r\n\r\nbody\r\n")


def test_load_key_from_file_and_env(tmp_path: Path) -> None:
    pem = (KEYS / "rsa2048.pem").read_bytes()
    assert load_key(KEYS / "rsa2048.pem") == pem
    escaped = pem.decode().replace("\n", "\\n")
    assert load_key(key_env="DKIM_KEY", environ={"DKIM_KEY": escaped}) == pem


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one"),
        ({"key_file": "a.pem", "key_env": "X"}, "exactly one"),
        ({"key_file": "/nonexistent/dkim.pem"}, "cannot be read"),
        ({"key_env": "DKIM_KEY", "environ": {}}, "DKIM_KEY .* not set"),
        ({"key_env": "DKIM_KEY", "environ": {"DKIM_KEY": "hello"}}, "not hold a PEM"),
    ],
)
def test_load_key_rejects_bad_key_configurations(kwargs: dict, message: str) -> None:
    with pytest.raises(DkimKeyError, match=message):
        load_key(**kwargs)


def test_load_key_never_shows_the_key(tmp_path: Path) -> None:
    broken = (KEYS / "rsa2048.pem").read_bytes().replace(b"M", b"!")
    path = tmp_path / "broken.pem"
    path.write_bytes(broken)
    with pytest.raises(DkimKeyError) as info:
        load_key(path)
    assert "!" not in str(info.value) and info.value.__cause__ is None
    config = DkimKeyConfig("s1", "example.com", (KEYS / "rsa2048.pem").read_bytes())
    assert "PRIVATE" not in repr(config)


def test_algorithm_must_match_the_key() -> None:
    config = DkimKeyConfig(
        "s1", "example.com", (KEYS / "rsa2048.pem").read_bytes(), DkimAlgorithm.ED25519_SHA256
    )
    with pytest.raises(DkimKeyError, match="not a key for ed25519-sha256"):
        DkimSigner(config)


def _txt(key: DkimKeyConfig) -> str:
    from mailctl.message.dkim import load_private_key, public_key_txt

    return public_key_txt(load_private_key(key))
