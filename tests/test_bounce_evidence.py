"""Forged and unmatched reports: a report suppresses only addresses it ties to mail mailctl
sent (signed VERP token or tracking id, Message-ID, or a recent send); a wildcard never; an
unmatched report is recorded and counted; a report saved twice in two containers counts once.
All against a real database that a real `send` to a simulated provider filled."""

from __future__ import annotations

import email.utils
import hashlib
import json
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from mailctl.bounces.parse import parse_message
from mailctl.bounces.suppression import EvidencePolicy, import_reports
from mailctl.errors import ConfigError
from mailctl.message.tracking import (
    TRACKING_RE,
    TrackingKeys,
    key_file_for,
    load_key_file,
    tracking_keys,
)
from mailctl.sim.dsn import append_to_mbox, build_dsn
from mailctl.store.sqlite import SqliteStore
from tests.helpers.workspace import cli, make_workspace

NOW = time.time()


@pytest.fixture
def sent(sim_server, tmp_path: Path, capsys) -> Path:
    """A workspace whose database holds 4 messages sent to user0..3@example.com."""
    server = sim_server()
    ws = make_workspace(tmp_path, server.port, rows=4)
    assert cli(ws, "send", str(ws / "c.yaml"), "--json") == 0
    assert json.loads(capsys.readouterr().out)["sent"] == 4
    return ws


def _dsn(rcpt: str, status: str = "5.1.1", headers: bytes = b"") -> bytes:
    return build_dsn(
        reporting_mta="mx.example.net",
        sender="news@example.com",
        rcpt=rcpt,
        status=status,
        diagnostic=f"550 {status} <{rcpt}>: Recipient address rejected: User unknown",
        original_headers=headers,
        arrival=NOW,
        queue_id="Q1",
    )


def _import(ws: Path, capsys, *paths: Path) -> dict:
    assert cli(ws, "bounces", "import", *map(str, paths), "--json") == 0
    return json.loads(capsys.readouterr().out)


def _suppressed(ws: Path) -> list[str]:
    conn = sqlite3.connect(ws / "m.db")
    return [row[0] for row in conn.execute("SELECT address FROM suppression ORDER BY address")]


def test_a_forged_wildcard_final_recipient_suppresses_no_domain(sent: Path, capsys) -> None:
    (sent / "forged.eml").write_bytes(_dsn("*@example.com"))
    result = _import(sent, capsys, sent / "forged.eml")
    assert (result["bounces"], result["suppressed"], result["rejected"]) == (1, 0, 1)
    assert _suppressed(sent) == []
    assert cli(sent, "suppress", "check", "user0@example.com") == 0
    assert capsys.readouterr().out == "user0@example.com is not suppressed\n"


def test_a_wildcard_is_rejected_even_from_a_trusted_mailbox(tmp_path: Path) -> None:
    (tmp_path / "forged.eml").write_bytes(_dsn("*@gmail.com"))
    with SqliteStore.open(tmp_path / "m.db") as store:
        result = import_reports(
            store, [str(tmp_path / "forged.eml")], evidence=EvidencePolicy(trust_unmatched=True)
        )
        assert (result.suppressed, result.rejected) == (0, 1)
        assert list(store.iter_suppression()) == []


def _listing(count: int) -> bytes:
    names = "\n".join(f"  stranger{i}@example.net: 550 5.1.1 User unknown" for i in range(count))
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\n"
        "To: news@example.com\nSubject: Undelivered Mail Returned to Sender\n"
        f"Date: {email.utils.formatdate(NOW)}\n\n"
        "This message could not be delivered to the following recipients:\n"
        f"{names}\n"
    ).encode()


def test_a_plain_text_bounce_naming_300_strangers_suppresses_no_one(sent: Path, capsys) -> None:
    (sent / "listing.eml").write_bytes(_listing(300))
    result = _import(sent, capsys, sent / "listing.eml")
    assert (result["bounces"], result["matched"], result["suppressed"]) == (1, 0, 0)
    assert result["unmatched"] == 1 and result["unmatched_recipients"] > 0
    assert result["unmatched_sources"] == [str(sent / "listing.eml")]
    assert _suppressed(sent) == []


def test_a_trusted_mailbox_suppresses_a_bounded_number_of_unmatched_addresses(
    tmp_path: Path,
) -> None:
    (tmp_path / "listing.eml").write_bytes(_listing(300))
    with SqliteStore.open(tmp_path / "m.db") as store:
        result = import_reports(
            store,
            [str(tmp_path / "listing.eml")],
            evidence=EvidencePolicy(trust_unmatched=True, max_unmatched=1),
        )
        assert result.unmatched_recipients > 0  # named, recorded, over the bound
        assert result.suppressed == 1
        assert len(list(store.iter_suppression())) == 1


def test_a_bounce_for_an_address_mailctl_sent_to_suppresses_it(sent: Path, capsys) -> None:
    (sent / "real.eml").write_bytes(_dsn("user1@example.com"))
    result = _import(sent, capsys, sent / "real.eml")
    assert (result["matched"], result["suppressed"], result["unmatched"]) == (1, 1, 0)
    assert _suppressed(sent) == ["user1@example.com"]


def test_unmatched_reports_go_to_the_errors_mailbox_and_the_report(sent: Path, capsys) -> None:
    (sent / "listing.eml").write_bytes(_listing(3))
    (sent / "real.eml").write_bytes(_dsn("user1@example.com"))
    errors = sent / "errors.mbox"
    assert (
        cli(
            sent,
            "bounces",
            "import",
            str(sent / "listing.eml"),
            str(sent / "real.eml"),
            "--errors",
            str(errors),
            "--json",
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["unmatched"] == 1
    kept = errors.read_bytes()
    assert kept.startswith(b"From MAILER-DAEMON ") and b"stranger0@example.net" in kept
    assert b"user1@example.com" not in kept
    assert cli(sent, "report", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bounce_reports"] == {"reports": 2, "unmatched": 1}


def _headers(ws: Path, address: str, tracking: str | None = None) -> tuple[str, bytes]:
    conn = sqlite3.connect(ws / "m.db")
    stored = conn.execute("SELECT tracking_id FROM messages WHERE email = ?", (address,)).fetchone()
    tracking = tracking or stored[0]
    return tracking, (
        f"From: News <news@example.com>\nTo: {address}\nSubject: Hello\n"
        f"Message-ID: <{tracking}@example.com>\nX-Mailctl-ID: {tracking}\n"
    ).encode()


def _event_message(ws: Path, digest: str) -> int | None:
    conn = sqlite3.connect(ws / "m.db")
    return conn.execute(
        "SELECT message_id FROM bounce_events WHERE digest = ?", (digest,)
    ).fetchone()[0]


def test_a_signed_tracking_id_ties_the_report_to_its_message(sent: Path, capsys) -> None:
    tracking, headers = _headers(sent, "user2@example.com")
    assert tracking.startswith("mc2-") and TRACKING_RE.fullmatch(tracking)
    raw = _dsn("user2@example.com", headers=headers)
    (sent / "b.eml").write_bytes(raw)
    _import(sent, capsys, sent / "b.eml")
    assert _event_message(sent, parse_message(raw, "b").digest) is not None


def test_a_forged_tracking_id_ties_the_report_to_no_message(sent: Path, capsys) -> None:
    tracking, _ = _headers(sent, "user2@example.com")
    forged = tracking[:-8] + ("a" * 8 if not tracking.endswith("a" * 8) else "b" * 8)
    # Even a row holding the forged id (an id this database's key never made) is not found.
    conn = sqlite3.connect(sent / "m.db")
    conn.execute("UPDATE messages SET tracking_id = ? WHERE tracking_id = ?", (forged, tracking))
    conn.commit()
    _, headers = _headers(sent, "stranger@example.net", forged)
    raw = _dsn("stranger@example.net", headers=headers)
    (sent / "f.eml").write_bytes(raw)
    result = _import(sent, capsys, sent / "f.eml")
    assert (result["matched"], result["suppressed"], result["unmatched"]) == (0, 0, 1)
    assert _event_message(sent, parse_message(raw, "f").digest) is None


def test_an_old_unsigned_id_in_the_database_still_correlates(sent: Path, capsys) -> None:
    tracking, _ = _headers(sent, "user3@example.com")
    legacy = "mc1-abcdefghijklmnop"
    conn = sqlite3.connect(sent / "m.db")
    conn.execute("UPDATE messages SET tracking_id = ? WHERE tracking_id = ?", (legacy, tracking))
    conn.commit()
    _, headers = _headers(sent, "user3@example.com", legacy)
    raw = _dsn("user3@example.com", headers=headers)
    (sent / "l.eml").write_bytes(raw)
    assert _import(sent, capsys, sent / "l.eml")["matched"] == 1
    assert _event_message(sent, parse_message(raw, "l").digest) is not None
    # An old-format id nobody stored ties nothing.
    _, headers = _headers(sent, "user3@example.com", "mc1-zzzzzzzzzzzzzzzz")
    raw = _dsn("stranger@example.net", headers=headers)
    (sent / "n.eml").write_bytes(raw)
    assert _import(sent, capsys, sent / "n.eml")["unmatched"] == 1


def test_the_key_file_is_created_once_private_and_exclusive(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    first = tracking_keys(str(db))
    path = key_file_for(str(db))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = tracking_keys(str(db))
    assert first.keys == again.keys
    made = first.new_id()
    assert again.verify(made) and not TrackingKeys([b"another key of 32 bytes........."]).verify(
        made
    )
    # A symlink where the key file should be is refused, never followed.
    link = tmp_path / "link.key"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="link.key"):
        load_key_file(link)
    assert not (tmp_path / "elsewhere").exists()


def test_a_key_from_the_environment_signs_and_must_be_long_enough(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("TRACK_KEY", "k" * 32)
    keys = tracking_keys(str(tmp_path / "m.db"), "TRACK_KEY")
    made = keys.new_id()
    assert tracking_keys(str(tmp_path / "m.db"), None, ["TRACK_KEY"]).verify(made)
    assert not tracking_keys(str(tmp_path / "m.db")).verify(made)
    monkeypatch.setenv("TRACK_KEY", "short")
    with pytest.raises(ConfigError, match="TRACK_KEY"):
        tracking_keys(str(tmp_path / "m.db"), "TRACK_KEY")


def _arf(headers: bytes) -> bytes:
    return (
        "From: staff@hotmail.example\nTo: fbl@example.com\nSubject: complaint\n"
        f"Date: {email.utils.formatdate(NOW)}\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nThis is an email abuse report.\n\n"
        "--b\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\n"
        "User-Agent: test/1.0\nVersion: 1\nOriginal-Rcpt-To: user0@example.com\n\n"
        "--b\nContent-Type: text/rfc822-headers\n\n" + headers.decode() + "\n--b--\n"
    ).encode()


def test_one_complaint_as_eml_and_inside_an_mbox_counts_once(sent: Path, capsys) -> None:
    _, headers = _headers(sent, "user0@example.com")
    arf = _arf(headers)
    (sent / "arf.eml").write_bytes(arf.replace(b"\n", b"\r\n"))
    mbox = sent / "fbl.mbox"
    # A mail client's mbox adds its status header to the same message.
    append_to_mbox(mbox, arf.replace(b"\nSubject:", b"\nStatus: RO\nSubject:", 1), NOW)
    first = _import(sent, capsys, sent / "arf.eml")
    second = _import(sent, capsys, mbox)
    assert (first["complaints"], first["suppressed"]) == (1, 1)
    assert (second["complaints"], second["already_imported"]) == (0, 1)
    conn = sqlite3.connect(sent / "m.db")
    assert conn.execute("SELECT count(*) FROM bounce_events").fetchone()[0] == 1
    assert conn.execute("SELECT sum(complained) FROM ip_days").fetchone()[0] == 1


def test_a_report_imported_under_its_old_raw_digest_is_not_counted_again(
    sent: Path, capsys
) -> None:
    raw = _dsn("user1@example.com")
    (sent / "old.eml").write_bytes(raw)
    with SqliteStore.open(sent / "m.db") as store, store.transaction():
        # What an earlier version stored: the digest of the raw bytes.
        store.add_bounce_event(
            digest=hashlib.sha256(raw).hexdigest(),
            source="old.eml",
            kind="bounce",
            now=NOW,
            reported_at=NOW,
            tracking_id=None,
            original_message_id=None,
            feedback_type=None,
            message_id=None,
        )
    result = _import(sent, capsys, sent / "old.eml")
    assert (result["already_imported"], result["bounces"], result["suppressed"]) == (1, 0, 0)


def test_a_profile_can_trust_its_bounce_mailbox(sim_server, tmp_path: Path, capsys) -> None:
    server = sim_server()
    ws = make_workspace(
        tmp_path,
        server.port,
        rows=1,
        profile_extra="    bounces: {trust_unmatched: true, max_unmatched: 1}\n",
    )
    (ws / "listing.eml").write_bytes(_listing(300))
    result = _import(ws, capsys, ws / "listing.eml")
    assert (result["unmatched"], result["suppressed"]) == (1, 1)


@pytest.mark.parametrize(
    "setting,problem",
    [
        ("bounces: {trust_unmatched: maybe}", "bounces.trust_unmatched"),
        ("bounces: {max_unmatched: 1000}", "bounces.max_unmatched: 1000 is more than 100"),
        ("bounces: {trust: true}", "bounces.trust: unknown key 'trust'"),
        ("tracking_key_env: 'not a name'", "tracking_key_env: 'not a name' is not an environment"),
    ],
)
def test_bounce_settings_in_a_profile_are_validated(
    sim_server, tmp_path: Path, capsys, setting: str, problem: str
) -> None:
    server = sim_server()
    ws = make_workspace(tmp_path, server.port, rows=1, profile_extra=f"    {setting}\n")
    (ws / "b.eml").write_bytes(_dsn("user0@example.com"))
    assert cli(ws, "bounces", "import", str(ws / "b.eml")) == 2
    err = capsys.readouterr().err
    line = len((ws / "profiles.yaml").read_text().splitlines())  # the setting: the last line
    assert err.startswith(f"Error: {ws / 'profiles.yaml'}:{line}: profiles.relay.")
    assert problem in err and err.count("\n") == 1


def test_a_profile_key_from_the_environment_signs_what_send_stamps(
    sim_server, tmp_path: Path, capsys, monkeypatch
) -> None:
    server = sim_server()
    ws = make_workspace(
        tmp_path, server.port, rows=2, profile_extra="    tracking_key_env: NEWS_TRACKING_KEY\n"
    )
    assert cli(ws, "send", str(ws / "c.yaml"), "--json") == 2
    err = capsys.readouterr().err
    assert err == (
        f"Error: {ws / 'profiles.yaml'}:4: profiles.relay.tracking_key_env: environment "
        "variable NEWS_TRACKING_KEY is not set\n"
    )
    monkeypatch.setenv("NEWS_TRACKING_KEY", "a secret of at least sixteen characters")
    assert cli(ws, "send", str(ws / "c.yaml"), "--json") == 0
    capsys.readouterr()
    tracking, headers = _headers(ws, "user1@example.com")
    assert tracking_keys(":memory:", "NEWS_TRACKING_KEY").verify(tracking)
    assert not tracking_keys(str(ws / "m.db")).verify(tracking)  # not the key file's
    raw = _dsn("user1@example.com", headers=headers)
    (ws / "b.eml").write_bytes(raw)
    assert _import(ws, capsys, ws / "b.eml")["matched"] == 1
    assert _event_message(ws, parse_message(raw, "b").digest) is not None
