"""Bounce/complaint import against real mailboxes, and the suppression list commands."""

from __future__ import annotations

import email.utils
import io
import json
import sys
from pathlib import Path

import pytest

from mailctl.bounces.suppression import EvidencePolicy, SoftBouncePolicy, import_reports
from mailctl.cli import run
from mailctl.sim.behaviours import AddressRule, SimBehaviour
from mailctl.sim.dsn import append_to_mbox, build_dsn
from mailctl.sim.replies import SimReply
from mailctl.store.factory import open_store
from mailctl.store.sqlite import SqliteStore
from tests.helpers.workspace import cli, db_of, db_rows, make_workspace

CORPUS = Path(__file__).parent / "data" / "bounces"


def sent_headers(ws: Path, address: str) -> tuple[str, bytes]:
    ((tracking, ip),) = db_rows(
        ws, f"SELECT tracking_id, ip FROM messages WHERE email = '{address}'"
    )
    headers = (
        f"From: News <news@example.com>\nTo: {address}\nSubject: Hello\n"
        f"Message-ID: <{tracking}@example.com>\nX-Mailctl-ID: {tracking}\n"
    ).encode()
    return tracking, headers


@pytest.mark.usefixtures("backend")  # SQLite and PostgreSQL
def test_async_bounces_from_provider_mbox(sim_server, tmp_path: Path, capsys) -> None:
    mbox = tmp_path / "bounces.mbox"
    server = sim_server(
        SimBehaviour(
            bounce_rules=(
                AddressRule(
                    "user1@example.com",
                    SimReply(550, "5.1.1 <{rcpt}>: Recipient address rejected: User unknown"),
                ),
                AddressRule(
                    "user2@example.com",
                    SimReply(
                        550,
                        "5.7.1 Service unavailable; client [192.0.2.1] blocked using zen.spamhaus.org",
                    ),
                ),
            )
        ),
        mbox=mbox,
    )
    ws = make_workspace(tmp_path, server.port, rows=6)
    assert cli(ws, "send", str(ws / "c.yaml"), "--json") == 0
    assert json.loads(capsys.readouterr().out)["sent"] == 6
    assert len(server.bounces) == 2
    # A garbage message in the same mailbox must not stop the import.
    append_to_mbox(mbox, b"\x00\xff not a message at all", 1_800_000_000)
    assert cli(ws, "bounces", "import", str(mbox), "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["messages"] == 3 and result["bounces"] == 2 and result["matched"] == 2
    assert result["suppressed"] == 1  # the blocklist bounce is the sender's fault
    states = dict(db_rows(ws, "SELECT email, state FROM messages"))
    assert states["user1@example.com"] == "bounced"
    assert states["user2@example.com"] == "failed"  # a block says nothing about the recipient
    with open_store(db_of(ws)) as store:
        assert store.suppression_for("user1@example.com")["reason"] == "hard_bounce"
        assert store.suppression_for("user2@example.com") is None
        days = store.ip_days()
        assert sum(d["bounced"] for d in days) == 2 and sum(d["blocks"] for d in days) == 1
    # Idempotent: the second import changes nothing.
    assert cli(ws, "bounces", "import", str(mbox), "--json") == 0
    again = json.loads(capsys.readouterr().out)
    assert again["already_imported"] == 3 - again["errors"] and again["suppressed"] == 0
    # And the next send of a new campaign row to a suppressed address never happens.
    assert cli(ws, "suppress", "check", "user1@example.com") == 0
    assert "suppressed: hard_bounce" in capsys.readouterr().out


@pytest.mark.usefixtures("backend")
def test_complaint_marks_message_and_suppresses(sim_server, tmp_path: Path, capsys) -> None:
    server = sim_server()
    ws = make_workspace(tmp_path, server.port, rows=2)
    assert cli(ws, "send", str(ws / "c.yaml"), "--json") == 0
    capsys.readouterr()
    tracking, headers = sent_headers(ws, "user0@example.com")
    arf = (
        "From: staff@hotmail.example\nTo: fbl@example.com\nSubject: complaint\n"
        f"Date: {email.utils.formatdate()}\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nThis is an email abuse report.\n\n"
        "--b\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\n"
        "User-Agent: test/1.0\nVersion: 1\nOriginal-Rcpt-To: user0@example.com\n\n"
        "--b\nContent-Type: text/rfc822-headers\n\n" + headers.decode() + "\n--b--\n"
    ).encode()
    (tmp_path / "arf.eml").write_bytes(arf)
    assert cli(ws, "bounces", "import", str(tmp_path / "arf.eml"), "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["complaints"], result["suppressed"], result["matched"]) == (1, 1, 1)
    assert db_rows(ws, f"SELECT state FROM messages WHERE tracking_id = '{tracking}'") == [
        ("complained",)
    ]
    assert db_rows(ws, "SELECT sum(complained) FROM ip_days") == [(1,)]


def _dsn(rcpt: str, status: str, diagnostic: str, when: float, headers: bytes = b"") -> bytes:
    return build_dsn(
        reporting_mta="mx.example.net",
        sender="news@example.com",
        rcpt=rcpt,
        status=status,
        diagnostic=diagnostic,
        original_headers=headers,
        arrival=when,
        queue_id=f"Q{int(when)}",
    )


def test_soft_bounces_suppress_after_three_distinct_days(tmp_path: Path) -> None:
    day = 86400.0
    start = 1_800_000_000.0
    mbox = tmp_path / "soft.mbox"
    # Two soft bounces on the same day count once; the third distinct day suppresses.
    for offset in (0, 0.1, 1, 2):
        when = start + offset * day
        append_to_mbox(
            mbox, _dsn("full@example.org", "4.2.2", "452 4.2.2 Mailbox full", when), when
        )
    # These reports name no message this database sent: a mailbox only the MTA writes to.
    trusted = EvidencePolicy(trust_unmatched=True)
    with SqliteStore.open(tmp_path / "m.db") as store:
        first = import_reports(store, [str(mbox)], now=start + 3 * day, evidence=trusted)
        entry = store.suppression_for("full@example.org", now=start + 3 * day)
        assert first.suppressed == 1 and entry["reason"] == "soft_bounce_limit"
        assert entry["expires_at"] == pytest.approx(start + 33 * day)
        assert store.suppression_for("full@example.org", now=start + 40 * day) is None
    # Below the limit: nothing.
    mbox2 = tmp_path / "soft2.mbox"
    for offset in (0, 1):
        when = start + offset * day
        append_to_mbox(
            mbox2, _dsn("busy@example.org", "4.2.2", "452 4.2.2 Mailbox full", when), when
        )
    with SqliteStore.open(tmp_path / "m2.db") as store:
        assert (
            import_reports(
                store,
                [str(mbox2)],
                now=start + 2 * day,
                policy=SoftBouncePolicy(limit=3),
                evidence=trusted,
            ).suppressed
            == 0
        )


def test_corpus_delays_never_suppress_and_stdin_works(tmp_path: Path, monkeypatch, capsys) -> None:
    labels = json.loads((CORPUS / "labels.json").read_text())
    delayed = [
        entry["file"]
        for entry in labels
        if any(r.get("action") == "delayed" for r in entry["per_recipient"])
    ]
    assert delayed
    db = str(tmp_path / "d.db")
    for name in delayed:
        # A fresh database per report: the question is what one delay does on its own.
        one = str(tmp_path / f"{name}.db")
        assert run(["--db", one, "bounces", "import", str(CORPUS / "eml" / name), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["suppressed"] == 0
    raw = (CORPUS / "eml" / "arf-01.eml").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(raw))))
    assert run(["--db", db, "bounces", "import", "-", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["complaints"] == 1


def test_bounces_parse_prints_stable_json(tmp_path: Path, capsys) -> None:
    mbox = CORPUS / "mbox" / "mbox-1"
    assert run(["bounces", "parse", str(mbox), "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1  # mbox-1 holds one message
    for number, line in enumerate(lines, start=1):
        obj = json.loads(line)
        assert set(obj) == {
            "source",
            "kind",
            "recipients",
            "tracking_id",
            "original_message_id",
            "confidence",
        }
        assert obj["confidence"] in ("dsn", "mta-rule", "generic", None)
        assert obj["source"] == f"{mbox}#{number}"  # the mailbox, then the message's number
        for r in obj["recipients"]:
            assert set(r) == {
                "address",
                "status",
                "action",
                "reason",
                "permanent",
                "suppress",
                "diagnostic",
                "stage",
            }
    # A missing mailbox is an error (its own database, not ./mailctl.db in the repository).
    db = str(tmp_path / "m.db")
    assert run(["--db", db, "bounces", "import", str(CORPUS / "nope.mbox")]) == 1


def test_suppress_add_check_import_and_list_commands(tmp_path: Path, capsys) -> None:
    db = ["--db", str(tmp_path / "s.db")]
    assert run([*db, "suppress", "add", "Ada@Example.COM"]) == 0
    assert run([*db, "suppress", "add", "*@Blocked.Example", "--reason", "manual"]) == 0
    assert run([*db, "suppress", "add", "x@y.example", "--reason", "bogus"]) == 2
    assert run([*db, "suppress", "add", "not an address"]) == 2
    capsys.readouterr()
    assert run([*db, "suppress", "check", "someone@blocked.example", "--json"]) == 0
    check = json.loads(capsys.readouterr().out)
    assert check["suppressed"] and check["entry"]["address"] == "*@blocked.example"
    (tmp_path / "in.csv").write_text("email,reason\nbob@example.net,unsubscribe\nbad,manual\n")
    assert run([*db, "suppress", "import", str(tmp_path / "in.csv")]) == 0
    assert "1 added, 1 invalid" in capsys.readouterr().err
    assert run([*db, "suppress", "list", "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["address"]: r["reason"] for r in listed} == {
        "ada@example.com": "manual",  # stored by its canonical key
        "*@blocked.example": "manual",
        "bob@example.net": "unsubscribe",
    }
    assert (
        run([*db, "suppress", "export", str(tmp_path / "out.csv"), "--reason", "unsubscribe"]) == 0
    )
    assert (
        (tmp_path / "out.csv").read_text().splitlines()[1].startswith("bob@example.net,unsubscribe")
    )
    assert run([*db, "suppress", "remove", "bob@example.net"]) == 0
    assert run([*db, "suppress", "remove", "bob@example.net"]) == 1
