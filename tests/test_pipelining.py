"""PIPELINING (RFC 2920) against a real Postfix smtpd: MAIL, RCPT and DATA go out in one write
where the server offers it, never where it does not, and refusals inside a pipelined group
keep the session in step (every reply read, then RSET) on one connection."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import pytest

from mailctl.delivery.smtp_reader import ReplyReader
from tests.helpers.postfix import have_postfix, postfix_receiver
from tests.helpers.workspace import postfix_workspace, send_json

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
    # 2 writes per message (MAIL+RCPT+DATA, then the text), one RSET after each refusal,
    # and QUIT: the server was pipelined to, and every reply it owed was read.
    assert list(writes.values()) == [18 * 2 + 2 * 2 + 1]


@pytest.mark.parametrize(
    ("offered", "profile", "per_message"),
    [(True, True, 2), (False, True, 4), (True, False, 4)],
    ids=["offered", "not-offered", "turned-off-in-the-profile"],
)
def test_commands_are_pipelined_only_where_offered_and_allowed(
    tmp_path: Path, capsys, writes: Counter[int], offered: bool, profile: bool, per_message: int
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
    assert list(writes.values()) == [10 * per_message + 1]
