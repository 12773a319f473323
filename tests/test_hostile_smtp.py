"""Real sends against a hostile SMTP server (tests/hostile_smtp): "sent" only when the
receiver took the message (a 2xx to the end of data after a 354); every misbehaviour defers
or fails the message by its reply, never hangs the run and never stops the campaign for a
reason that is not the sender's."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.workspace import make_workspace, send, send_json
from tests.hostile_smtp import HostileServer, Script

Start = Callable[[Script], HostileServer]


def workspace(tmp_path: Path, port: int, rows: int, *, timeout: str = "2s") -> Path:
    """One connection, a short timeout, a retry after 1 s: each misbehaviour shows at once."""
    profile = {
        "connections": 1,
        "messages_per_connection": None,
        "timeout": timeout,
        "retry": "[1s]",
        "max_age": "1d",
    }
    return make_workspace(tmp_path, port, rows=rows, profile=profile)


def rows(ws: Path) -> list[tuple[str, str, str, int]]:
    conn = sqlite3.connect(ws / "m.db")
    try:
        return conn.execute(
            "SELECT state, coalesce(reason, ''), coalesce(last_reply, ''), possible_duplicate"
            " FROM messages ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


def send_unreachable(ws: Path, capsys) -> dict:
    """`send --json` toward a relay that never held an SMTP session: exit 3 (the operator
    must look), one line on stderr, the summary on stdout."""
    code = send(ws)
    captured = capsys.readouterr()
    assert code == 3, captured.err
    assert captured.err.startswith("Error: the relay was unreachable for the whole run")
    assert captured.err.count("\n") == 1
    return json.loads(captured.out)


def campaign_status(ws: Path) -> str:
    conn = sqlite3.connect(ws / "m.db")
    try:
        return str(conn.execute("SELECT status FROM campaigns").fetchone()[0])
    finally:
        conn.close()


# --------------------------------------------------------------- 2xx at the wrong stage


@pytest.mark.parametrize(
    ("verb", "reply"),
    [
        ("MAIL", b"252 2.1.0 Cannot verify, will attempt\r\n"),
        ("RCPT", b"252 2.1.5 Cannot VRFY user, but will accept message\r\n"),
        ("DATA", b"250 2.0.0 Ok\r\n"),
    ],
    ids=["252-to-MAIL", "252-to-RCPT", "250-to-DATA"],
)
@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelined"])
def test_a_2xx_at_the_wrong_stage_is_a_protocol_error_never_sent(
    hostile_server: Start, tmp_path: Path, capsys, verb: str, reply: bytes, pipelining: bool
) -> None:
    server = hostile_server(Script(replies={verb: reply}, pipelining=pipelining))
    ws = workspace(tmp_path, server.port, rows=2)
    result = send_json(ws, capsys)
    assert (result["sent"], result["deferred"]) == (0, 2)
    assert server.messages == []
    code = int(reply[:3])
    assert (
        rows(ws)
        == [
            (
                "deferred",
                "protocolerror",
                f"protocol error: unexpected {code} reply to {verb}: {reply[4:].decode().strip()}",
                0,
            )
        ]
        * 2
    )


def test_only_a_2xx_after_the_data_is_sent(hostile_server: Start, tmp_path: Path, capsys) -> None:
    server = hostile_server(Script())
    ws = workspace(tmp_path, server.port, rows=3)
    result = send_json(ws, capsys)
    assert (result["sent"], result["deferred"], result["possible_duplicates"]) == (3, 0, 0)
    assert len(server.messages) == 3
    assert server.commands[:6] == ["EHLO", "MAIL", "RCPT", "DATA", "MAIL", "RCPT"]


# --------------------------------------------------------------- no answer after the dot


def test_a_250_after_the_timeout_is_one_delivery_flagged_as_a_possible_duplicate(
    hostile_server: Start, tmp_path: Path, capsys
) -> None:
    # The server delivers, then answers after the client gave up. With a 1 s retry the
    # old code offered it again and again within one waiting run (~3 deliveries each).
    server = hostile_server(Script(dot_delay=0.8))
    ws = workspace(tmp_path, server.port, rows=2, timeout="0.3s")
    started = time.time()
    result = send_json(ws, capsys, "--wait", "--max-time", "6s")
    assert result["sent"] == 0 and result["possible_duplicates"] == 2
    assert result["stop_reason"] == "deferred"
    assert time.time() - started < 5.5  # it did not wait for the next attempt
    assert result["next_attempt_at"] >= started + 3600
    time.sleep(1.0)  # let the late answers land
    assert len(server.messages) == 2  # once each, never again in this run
    for state, reason, reply, duplicate in rows(ws):
        assert (state, reason, duplicate) == ("deferred", "possibleduplicate", 1)
        assert reply.startswith("timeout:") and reply.endswith(
            "after the end of data (possible duplicate)"
        )


def test_a_drop_in_the_middle_of_the_data_defers_as_a_possible_duplicate(
    hostile_server: Start, tmp_path: Path, capsys
) -> None:
    # The client has written its final dot when it learns of the drop: it cannot know how
    # much arrived, so the message may have been delivered.
    server = hostile_server(Script(drop_after_data_bytes=100))
    ws = workspace(tmp_path, server.port, rows=1)
    result = send_json(ws, capsys)
    assert (result["sent"], result["deferred"], result["possible_duplicates"]) == (0, 1, 1)
    assert server.dots == 0 and server.messages == []
    state, reason, reply, duplicate = rows(ws)[0]
    assert (state, reason, duplicate) == ("deferred", "possibleduplicate", 1)
    assert reply.startswith("connection lost:")


def test_garbage_after_the_dot_is_a_possible_duplicate(
    hostile_server: Start, tmp_path: Path, capsys
) -> None:
    server = hostile_server(Script(replies={"DOT": b"ok thanks!\r\n"}))
    ws = workspace(tmp_path, server.port, rows=1)
    result = send_json(ws, capsys)
    assert (result["sent"], result["possible_duplicates"]) == (0, 1)
    state, reason, reply, duplicate = rows(ws)[0]
    assert (state, reason, duplicate) == ("deferred", "possibleduplicate", 1)
    assert reply.startswith("unreadable reply: Malformed SMTP response line: ok thanks!")


# --------------------------------------------------------------- broken sessions


def test_no_banner_times_out_into_a_deferral(hostile_server: Start, tmp_path: Path, capsys) -> None:
    server = hostile_server(Script(banner=None))
    ws = workspace(tmp_path, server.port, rows=1, timeout="0.3s")
    result = send_unreachable(ws, capsys)
    assert (result["sent"], result["deferred"], result["possible_duplicates"]) == (0, 1, 0)
    state, reason, reply, duplicate = rows(ws)[0]
    assert (state, reason, duplicate) == ("deferred", "networkerror", 0)
    assert "timed out" in reply.lower()


@pytest.mark.parametrize(
    "script",
    [
        Script(endless_banner=True),
        Script(banner=b"220 " + b"x" * 10_000_000),  # a 10 MB line, never ended
        Script(banner=b"220 " + b"x" * 10_000_000 + b"\r\n"),
        Script(banner=b"\x00\xff garbage, not SMTP\r\n"),
    ],
    ids=["endless-banner", "10MB-banner-unended", "10MB-banner-line", "garbage-banner"],
)
def test_a_banner_that_is_not_smtp_defers_without_hanging(
    hostile_server: Start, tmp_path: Path, capsys, script: Script
) -> None:
    server = hostile_server(script)
    ws = workspace(tmp_path, server.port, rows=1, timeout="1s")
    started = time.time()
    result = send_unreachable(ws, capsys)
    assert time.time() - started < 10
    assert (result["sent"], result["deferred"]) == (0, 1)
    state, reason, reply, duplicate = rows(ws)[0]
    assert (state, reason, duplicate) == ("deferred", "networkerror", 0)
    assert reply.startswith("connection to 127.0.0.1:")
    assert len(reply) <= 600  # the server's words are cut, not stored by the megabyte


@pytest.mark.parametrize(
    "reply",
    [b"250 " + b"y" * 10_000_000 + b"\r\n", b"hello? \x1b[31mred\r\n"],
    ids=["10MB-reply-line", "garbage-reply"],
)
def test_an_unreadable_reply_to_mail_is_a_protocol_error(
    hostile_server: Start, tmp_path: Path, capsys, reply: bytes
) -> None:
    server = hostile_server(Script(replies={"MAIL": reply}))
    ws = workspace(tmp_path, server.port, rows=1)
    result = send_json(ws, capsys)
    assert (result["sent"], result["deferred"]) == (0, 1)
    state, reason, text, duplicate = rows(ws)[0]
    assert (state, reason, duplicate) == ("deferred", "protocolerror", 0)
    assert text.startswith("protocol error: unreadable reply:")
    assert "\x1b" not in text and len(text) <= 600
    assert server.messages == []


# --------------------------------------------------------------- the sender's content error


def test_500_line_too_long_fails_the_message_and_never_stops_the_campaign(
    hostile_server: Start, tmp_path: Path, capsys
) -> None:
    server = hostile_server(Script(replies={"DOT": b"500 Line too long\r\n"}))
    ws = workspace(tmp_path, server.port, rows=3)
    result = send_json(ws, capsys)
    assert (result["sent"], result["failed"], result["stopped_campaigns"]) == (0, 3, {})
    assert server.dots == 3  # every message was tried: the campaign went on
    assert campaign_status(ws) == "done"
    assert {row[:3] for row in rows(ws)} == {("failed", "contenterror", "500 Line too long")}


def test_lines_starting_with_a_dot_arrive_intact(
    hostile_server: Start, tmp_path: Path, capsys
) -> None:
    server = hostile_server(Script())
    ws = workspace(tmp_path, server.port, rows=1)
    campaign = (ws / "c.yaml").read_text()
    (ws / "c.yaml").write_text(
        campaign.replace('html: "<p>Hi {{ first_name }}</p>"\n', "").replace(
            'text: "Hi {{ first_name }}, unsubscribe at {{ unsubscribe_url }}"',
            'text: "first\\n.\\n..two dots\\nlast"',
        )
    )
    result = send_json(ws, capsys)
    assert result["sent"] == 1
    body = server.messages[0].split(b"\r\n\r\n", 1)[1]
    assert body == b"first\r\n.\r\n..two dots\r\nlast\r\n"


# --------------------------------------------------------------- PIPELINING (RFC 2920)


@pytest.mark.parametrize("dribble", [False, True], ids=["whole-replies", "one-byte-writes"])
def test_pipelined_transactions_deliver_each_message_once(
    hostile_server: Start, tmp_path: Path, capsys, dribble: bool
) -> None:
    server = hostile_server(Script(pipelining=True, dribble=dribble))
    ws = workspace(tmp_path, server.port, rows=4)
    result = send_json(ws, capsys)
    assert (result["sent"], result["deferred"], result["possible_duplicates"]) == (4, 0, 0)
    assert len(server.messages) == 4
    # The next message's commands follow each text, RSET first (a clean transaction
    # whatever the reply to the text).
    assert server.commands[:8] == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA"]


@pytest.mark.parametrize("dribble", [False, True], ids=["whole-replies", "one-byte-writes"])
def test_a_pipelined_refusal_reads_every_reply_it_owes_and_keeps_the_session(
    hostile_server: Start, tmp_path: Path, capsys, dribble: bool
) -> None:
    # RCPT is refused, yet this server answers the pipelined DATA with a 354 anyway: RFC 2920
    # has the client end that with a lone dot, then RSET. Replies never drift out of step
    # (each message gets its own 550) and no message text ever reaches the server.
    server = hostile_server(
        Script(pipelining=True, dribble=dribble, replies={"RCPT": b"550 5.1.1 no such user\r\n"})
    )
    ws = workspace(tmp_path, server.port, rows=3)
    result = send_json(ws, capsys)
    assert (result["sent"], result["bounced"], result["deferred"]) == (0, 3, 0)
    assert {row[:3] for row in rows(ws)} == {("bounced", "userunknown", "550 5.1.1 no such user")}
    assert server.commands.count("EHLO") == 1  # one session for all three
    assert server.commands[1:6] == ["MAIL", "RCPT", "DATA", "RSET", "MAIL"]
    assert server.dots == 3 and server.messages == [b""] * 3  # lone dots: no text, no recipient


def test_a_recipient_taken_after_a_refused_mail_gets_no_dot(
    hostile_server: Start, tmp_path: Path, capsys
) -> None:
    # MAIL is refused, yet the pipelined RCPT is taken and DATA answered 354: the server
    # holds a transaction that is not this message's (Postfix does so after refusing a text
    # by its end-of-data restrictions). A lone dot would deliver an empty message there:
    # the client hangs up mid-data instead, which the server drops.
    server = hostile_server(
        Script(pipelining=True, replies={"MAIL": b"451 4.3.0 try again later\r\n"})
    )
    ws = workspace(tmp_path, server.port, rows=2)
    result = send_json(ws, capsys)
    assert (result["sent"], result["deferred"]) == (0, 2)
    assert server.dots == 0 and server.messages == []
    assert "RSET" not in server.commands  # nothing more said on a session out of step
