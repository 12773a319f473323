"""DNS preflight from zone files, DKIM key generation, and DKIM-signed delivery."""

from __future__ import annotations

import json
import os
import re
import stat
import textwrap
from pathlib import Path

import dkim as dkimpy
import pytest

from mailctl.cli import run
from mailctl.dns.resolver import ZoneResolver
from mailctl.errors import NoAnswer, NXDomain
from tests.helpers.workspace import cli, make_workspace, send

ZONES = Path(__file__).parent / "data" / "zones"


def keygen(tmp_path: Path, capsys) -> tuple[Path, str]:
    key = tmp_path / "example.com.s1.pem"
    assert (
        run(["dkim", "keygen", "--selector", "s1", "--domain", "example.com", "--out", str(key)])
        == 0
    )
    record = capsys.readouterr().out
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert "PRIVATE KEY" not in record and record.startswith("s1._domainkey.example.com.")
    assert (
        run(["dkim", "keygen", "--selector", "s1", "--domain", "example.com", "--out", str(key)])
        == 1
    )
    capsys.readouterr()
    return key, record.strip()


def write_zone(
    tmp_path: Path,
    dkim_record: str,
    *,
    spf: str = "v=spf1 ip4:192.0.2.10 -all",
    dmarc: str | None = "v=DMARC1; p=quarantine",
) -> list[Path]:
    lines = [
        "$ORIGIN example.com.",
        "$TTL 3600",
        "@ IN SOA ns.example.com. hostmaster.example.com. 1 3600 600 86400 300",
        "@ IN NS ns.example.com.",
        "@ IN MX 10 mx.example.com.",
        "mx IN A 192.0.2.25",
        "mail IN A 192.0.2.10",
        f'@ IN TXT "{spf}"',
        "bounces IN MX 10 mx.example.com.",
        f'bounces IN TXT "{spf}"',
        dkim_record,
    ]
    if dmarc:
        lines.append(f'_dmarc IN TXT "{dmarc}"')
    zone = tmp_path / "example.com.zone"
    zone.write_text("\n".join(lines) + "\n")
    return [zone, ZONES / "2.0.192.in-addr.arpa.zone"]


def direct_workspace(tmp_path: Path, key: Path) -> Path:
    (tmp_path / "profiles.yaml").write_text(
        textwrap.dedent(f"""\
        profiles:
          direct:
            transport: direct
            helo: mail.example.com
            bounce_domain: bounces.example.com
            pools:
              marketing: [192.0.2.10]
            dkim:
              - {{domain: example.com, selector: s1, key_file: {key}}}
        """)
    )
    (tmp_path / "c.yaml").write_text(
        textwrap.dedent("""\
        name: promo
        profile: direct
        from: "Shop <news@example.com>"
        subject: Hello
        text: Hi
        list: customers
        unsubscribe: {url: "https://example.com/u"}
        """)
    )
    return tmp_path


def test_check_passes_on_a_good_zone_and_fails_with_fixes(tmp_path: Path, capsys) -> None:
    key, record = keygen(tmp_path, capsys)
    ws = direct_workspace(tmp_path, key)
    zones = write_zone(tmp_path, record)
    args = ["--profiles", str(ws / "profiles.yaml"), "check", "--campaign", str(ws / "c.yaml")]
    zone_args = [x for z in zones for x in ("--zone", str(z))]
    assert run([*args, *zone_args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    statuses = {c["id"]: c["status"] for c in report["checks"]}
    assert statuses["dkim.key_match"] == "pass" and statuses["spf.authorises"] == "pass"
    assert statuses["rdns.fcrdns"] == "pass" and statuses["dmarc.record"] == "pass"
    assert all(r["met"] for r in report["requirements"].values()), report["requirements"]

    broken = write_zone(tmp_path, record, spf="v=spf1 ip4:198.51.100.1 -all", dmarc=None)
    assert run([*args, *[x for z in broken for x in ("--zone", str(z))]]) == 1
    out = capsys.readouterr().out
    assert "spf.authorises" in out and "dmarc.record" in out and "fail" in out
    assert "192.0.2.10" in out  # the fix names the IP to authorise


def dnsfunc(resolver: ZoneResolver):
    def get_txt(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            return "".join(resolver.txt(name.decode().rstrip("."))).encode()
        except (NXDomain, NoAnswer):
            return None

    return get_txt


def test_sent_messages_carry_a_valid_dkim_signature(sim_server, tmp_path: Path, capsys) -> None:
    key, record = keygen(tmp_path, capsys)
    zones = write_zone(tmp_path, record)
    server = sim_server(maildir=tmp_path / "box")
    ws = make_workspace(
        tmp_path,
        server.port,
        rows=5,
        profile_extra=f"    dkim:\n      - {{domain: example.com, selector: s1, key_file: {key}}}\n",
    )
    assert cli(ws, "send", str(ws / "c.yaml"), "--json") == 0
    assert json.loads(capsys.readouterr().out)["sent"] == 5
    resolver = ZoneResolver.from_files(zones)
    files = sorted((tmp_path / "box" / "new").iterdir())
    assert len(files) == 5
    for path in files:
        raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        signature = re.search(rb"DKIM-Signature:.*?h=([^;]+);", raw, re.S)
        assert signature is not None
        signed = signature.group(1).replace(b"\r\n", b"").replace(b" ", b"").lower().split(b":")
        for header in (
            b"from",
            b"to",
            b"subject",
            b"date",
            b"message-id",
            b"list-unsubscribe",
            b"list-unsubscribe-post",
            b"mime-version",
            b"content-type",
            b"feedback-id",
        ):
            assert header in signed
        assert dkimpy.verify(raw, dnsfunc=dnsfunc(resolver)), path.name
        assert not dkimpy.verify(raw.replace(b"Hi User", b"Hi Mallory"), dnsfunc=dnsfunc(resolver))


def test_send_runs_the_preflight_before_the_first_send(sim_server, tmp_path: Path, capsys) -> None:
    key, record = keygen(tmp_path, capsys)
    server = sim_server()
    ws = make_workspace(
        tmp_path,
        server.port,
        rows=3,
        profile_extra=f"    dkim:\n      - {{domain: example.com, selector: s1, key_file: {key}}}\n",
    )
    text = (ws / "profiles.yaml").read_text().replace("preflight: false", "preflight: true")
    (ws / "profiles.yaml").write_text(text)
    bad = write_zone(tmp_path, record, dmarc=None)
    assert send(ws, *[x for z in bad for x in ("--zone", str(z))]) == 3  # the operator's to fix
    err = capsys.readouterr().err
    assert "preflight failed" in err and "dmarc.record" in err
    assert not server.deliveries
    good = write_zone(tmp_path, record)
    assert send(ws, *[x for z in good for x in ("--zone", str(z))]) == 0
    assert json.loads(capsys.readouterr().out)["sent"] == 3


def test_failed_preflight_stops_send_unless_skip_check(sim_server, tmp_path: Path, capsys) -> None:
    server = sim_server()
    ws = make_workspace(tmp_path, server.port, rows=2)
    text = (ws / "profiles.yaml").read_text().replace("preflight: false", "preflight: true")
    (ws / "profiles.yaml").write_text(text)
    empty = tmp_path / "empty.zone"
    empty.write_text("$ORIGIN nothing.invalid.\n$TTL 60\n@ IN SOA ns. h. 1 1 1 1 1\n")
    assert send(ws, "--zone", str(empty)) == 3
    capsys.readouterr()
    assert send(ws, "--zone", str(empty), "--skip-check") == 0
    assert json.loads(capsys.readouterr().out)["sent"] == 2


@pytest.mark.parametrize("bits", ["512"])
def test_keygen_refuses_weak_keys(tmp_path: Path, bits: str, capsys) -> None:
    assert (
        run(
            [
                "dkim",
                "keygen",
                "--selector",
                "s",
                "--domain",
                "example.com",
                "--bits",
                bits,
                "--out",
                str(tmp_path / "k.pem"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "k.pem").exists()
