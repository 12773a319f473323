"""PIPELINING (RFC 2920) against a real Postfix smtpd: MAIL, RCPT and DATA go out in one write
where the server offers it, never where it does not, behind the last message's text where the
next message is at hand, and refusals inside a pipelined group keep the session in step (every
reply read, then RSET) on one connection."""

from __future__ import annotations

import socket
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from mailctl.delivery.smtp_reader import ReplyReader
from tests.helpers.postfix import have_postfix, postfix_receiver
from tests.helpers.workspace import cli, postfix_workspace, send, send_json, summary

pytestmark = pytest.mark.skipif(not have_postfix(), reason="Postfix is not installed")

# Postfix refuses two recipients by its own access map: one for good, one for now.
REFUSE = (
    "check_recipient_access inline:{"
    " { user3@example.com = 550 5.1.1 no such user },"
    " { user5@example.com = 450 4.2.0 mailbox busy } }, permit"
)


@pytest.fixture()
def writes(monkeypatch: pytest.MonkeyPatch) -> Counter[int]:
    """How many writes each session made (observed on the real reader, nothing replaced)."""
    seen: Counter[int] = Counter()
    original = ReplyReader.write

    def write(self: ReplyReader, data: bytes, replies: int) -> None:
        seen[id(self)] += 1
        original(self, data, replies)

    monkeypatch.setattr(ReplyReader, "write", write)
    return seen


def test_refusals_inside_a_pipelined_group_keep_the_session_in_step(
    tmp_path: Path, capsys, writes: Counter[int]
) -> None:
    with postfix_receiver(smtpd_recipient_restrictions=REFUSE) as postfix:
        ws = postfix_workspace(tmp_path, postfix.port, 20, connections=1)
        result = send_json(ws, capsys)
        assert (postfix.delivered, postfix.connections) == (18, 1)
        assert postfix.count(r"to=<user[35]@example\.com>[^\n]*status=sent") == 0
        assert postfix.count("Recipient address rejected: no such user") == 1
        assert postfix.count("Recipient address rejected: mailbox busy") == 1
    assert (result["sent"], result["bounced"], result["deferred"]) == (18, 1, 1)
    # One write per delivered text, which carries the next message's MAIL, RCPT and DATA
    # while the session is clean. A refusal costs an RSET, and the session presents nothing
    # until a delivery clears it, so the commands of user4, user5, user6 and user7 went on
    # their own, as did the first message's. Then QUIT: every reply owed was read, in step.
    assert list(writes.values()) == [18 + (1 + 4) + 2 + 1]


@pytest.mark.parametrize(
    ("offered", "profile", "expected_writes"),
    # Offered: the first message's commands, then one write per text carrying the next
    # message's commands. Not: MAIL, RCPT, DATA and the text one by one. Both end with QUIT.
    [(True, True, 1 + 10 + 1), (False, True, 10 * 4 + 1), (True, False, 10 * 4 + 1)],
    ids=["offered", "not-offered", "turned-off-in-the-profile"],
)
def test_commands_are_pipelined_only_where_offered_and_allowed(
    tmp_path: Path, capsys, writes: Counter[int], offered: bool, profile: bool, expected_writes: int
) -> None:
    # Without PIPELINING in its EHLO reply, this Postfix hangs up on any client that sends
    # a command before the reply to the last one (smtpd_forbid_unauth_pipelining).
    settings = {"smtpd_forbid_unauth_pipelining": "yes"}
    if not offered:
        settings["smtpd_discard_ehlo_keywords"] = "pipelining"
    with postfix_receiver(**settings) as postfix:
        ws = postfix_workspace(
            Path(tempfile.mkdtemp(dir=tmp_path)), postfix.port, 10, connections=1
        )
        if not profile:
            text = (ws / "profiles.yaml").read_text()
            text = text.replace(
                "    connections: 1\n", "    connections: 1\n    pipelining: false\n"
            )
            (ws / "profiles.yaml").write_text(text)
        result = send_json(ws, capsys)
        assert "improper command pipelining" not in postfix.log
        assert (result["sent"], postfix.delivered, postfix.connections) == (10, 10, 1)
    assert list(writes.values()) == [expected_writes]


def end_of_data_refusal(reply: str) -> str:
    """Postfix refusing user4's message at the end of its data (with one recipient, the
    recipient is known there), with the reply text given."""
    return f"check_recipient_access inline:{{ {{ user4@example.com = {reply} }} }}, permit"


def test_a_refusal_of_the_text_leaves_the_presented_message_in_step(
    tmp_path: Path, capsys, writes: Counter[int]
) -> None:
    # user5's MAIL, RCPT and DATA went out behind user4's text: the refusal of that text
    # ends user4's transaction (no RSET, which would cancel user5's), and user5 goes on.
    refusal = end_of_data_refusal("550 5.1.1 no such user")
    with postfix_receiver(smtpd_end_of_data_restrictions=refusal) as postfix:
        ws = postfix_workspace(tmp_path, postfix.port, 20, connections=1)
        result = send_json(ws, capsys)
        assert postfix.settled_count(r"status=sent ", 19) == 19
        assert postfix.connections == 1
        assert postfix.count(r"reject: END-OF-MESSAGE[^\n]*no such user") == 1
        assert postfix.count(r"to=<user5@example\.com>[^\n]*status=sent") == 1
    assert (result["sent"], result["bounced"], result["deferred"]) == (19, 1, 0)
    # 20 texts, the first message's commands, user6's (the session was not clean when
    # user5's text went), QUIT.
    assert list(writes.values()) == [20 + 2 + 1]


def test_a_presented_message_of_a_stopped_campaign_is_never_sent(tmp_path: Path, capsys) -> None:
    # Gmail's DMARC refusal at the end of data stops the campaign. user5's commands were
    # already out behind user4's text: its text must not follow. The session is hung up
    # mid-transaction, which the server drops.
    dmarc = (
        "550 5.7.26 Unauthenticated email from example.com is not accepted"
        " due to domain's DMARC policy"
    )
    with postfix_receiver(smtpd_end_of_data_restrictions=end_of_data_refusal(dmarc)) as postfix:
        ws = postfix_workspace(tmp_path, postfix.port, 20, connections=1)
        assert send(ws) == 3  # the operator must act
        result = summary(capsys)
        # Sent in address order: user0, user10 … user19, user1 … user3, then user4.
        assert postfix.settled_count(r"status=sent ", 14) == 14
        assert postfix.count(r"to=<user5@example\.com>[^\n]*status=sent") == 0
        # user5's RSET, MAIL, RCPT and DATA did go out (16 of each but RSET), and its DATA
        # was never ended: the server dropped it with the session.
        assert (
            postfix.settled_count(r"disconnect from [^\n]* mail=16 rcpt=16 data=14/16 rset=15 ", 1)
            == 1
        )
    assert (result["sent"], result["failed"], result["stop_reason"]) == (
        14,
        1,
        "campaign stopped",
    )


def test_a_presented_message_to_an_address_that_just_bounced_is_never_sent(
    tmp_path: Path, capsys
) -> None:
    # Two campaigns to user4, queued while the relay was down, then sent in one run: the
    # second one's commands go out behind the first one's text, which the receiver refuses
    # for good (no such user). The address is suppressed from then on, in this run too: the
    # second text never follows, the session is hung up, and the rest goes on a new one.
    refusal = end_of_data_refusal("550 5.1.1 no such user")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        down = probe.getsockname()[1]
    with postfix_receiver(smtpd_end_of_data_restrictions=refusal) as postfix:
        ws = postfix_workspace(tmp_path, down, 0, connections=1)
        (ws / "a.csv").write_text("email\nuser4@example.com\n")
        (ws / "b.csv").write_text("email\nuser4@example.com\nuser6@example.com\n")
        for name in ("a", "b"):
            text = (ws / "c.yaml").read_text()
            text = text.replace("name: news", f"name: {name}").replace("list.csv", f"{name}.csv")
            (ws / f"{name}.yaml").write_text(text)
            assert cli(ws, "send", str(ws / f"{name}.yaml")) == 3  # the relay is down
        profiles = ws / "profiles.yaml"
        profiles.write_text(profiles.read_text().replace(f"port: {down}", f"port: {postfix.port}"))
        assert cli(ws, "queue", "retry") == 0
        capsys.readouterr()
        assert cli(ws, "send", "--all", "--json") == 0
        result = summary(capsys)
        assert postfix.count("reject: END-OF-MESSAGE") == 1
        # The second message was presented (its RSET, MAIL, RCPT, DATA), never ended.
        assert (
            postfix.settled_count(r"disconnect from [^\n]* mail=2 rcpt=2 data=0/2 rset=1 ", 1) == 1
        )
        assert postfix.settled_count(r"to=<user6@example\.com>[^\n]*status=sent", 1) == 1
    assert (result["sent"], result["bounced"], result["suppressed"]) == (1, 1, 1)
