"""One send session against a real Postfix: a message refused by a rate throttle is sent
again on the same session at the lane's next slot, before the messages queued behind it, with
no new connection and no trip through the queue; and a relay send without DNS never loads the
DNS library.

Postfix is private (tests/helpers/postfix.py: its own directory, a free loopback port, anvil
limits); what happened is read from its own log. Timing figures are in
bench/receivers_bench.py, not here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from mailctl.reputation.aimd import AimdPolicy, Pacer
from tests.helpers.postfix import free_port, have_postfix, postfix_receiver
from tests.helpers.workspace import db_rows, postfix_workspace, send_json

needs_postfix = pytest.mark.skipif(not have_postfix(), reason="Postfix is not installed")
REPO = Path(__file__).resolve().parent.parent


def accepted_in_order(log: str) -> list[str]:
    """Recipients in the order Postfix's smtpd accepted them: a queue file is opened (its
    ``client=`` line) at the first accepted RCPT, and the delivery line names its recipient."""
    order: list[str] = []
    pending: dict[str, int] = {}
    for line in log.splitlines():
        opened = re.search(r"smtpd\[\d+\]: ([0-9A-F]+): client=", line)
        if opened:
            pending[opened.group(1)] = len(order)
            order.append("")
            continue
        delivered = re.search(r": ([0-9A-F]+): to=<([^>]+)>.*status=sent", line)
        if delivered and delivered.group(1) in pending:
            order[pending.pop(delivered.group(1))] = delivered.group(2)
    return order


def queued_in_order(ws: Path) -> list[str]:
    """The recipients in the order they were queued (claims go by due time, then this)."""
    return [row[0] for row in db_rows(ws, "SELECT email FROM messages ORDER BY id")]


@needs_postfix
def test_a_rate_refused_message_goes_again_on_the_same_session_before_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 20 recipients per 3 s (anvil counts whole seconds): 45 messages meet the limit twice.
    with postfix_receiver(time_unit="3s", smtpd_client_recipient_rate_limit=20) as postfix:
        ws = postfix_workspace(tmp_path, postfix.port, rows=45, connections=1, transactional=True)
        result = send_json(ws, capsys, "--max-time", "60s")
        assert (result["sent"], result["deferred"], result["remaining"]) == (45, 0, 0)
        refused = postfix.count(r"warning: Recipient address rate limit exceeded")
        assert refused >= 1
        # One session carried everything, the refusals included: no reconnect for a retry.
        assert postfix.connections == 1
        assert postfix.count(r"disconnect from .* rcpt=45/\d+ ") == 1
        # Each refused recipient was the next one accepted: the list went out in the order it
        # was queued (and claimed). Through the queue (retry delay, claim, render) it would come after the
        # messages already waiting on the connection.
        assert accepted_in_order(postfix.log) == queued_in_order(ws)
    # The throttle still taught the lane: the learned pacing is kept for the next run.
    ((throttled, reason),) = db_rows(
        ws, "SELECT throttled, learned_reason FROM lanes WHERE provider = 'example.com'"
    )
    assert throttled >= 1
    assert "too many recipients" in reason


def test_a_relay_send_without_dns_lookups_never_loads_the_dns_library(tmp_path: Path) -> None:
    # The relay is a port nobody listens on: the send fails to connect, which is enough to
    # go through the whole send path (campaign import, routing, rendering, a connection).
    postfix_workspace(tmp_path, free_port(), rows=1, connections=1, transactional=True)
    script = (
        "import json, sys\n"
        "from mailctl.cli import run\n"
        f"code = run(['--db', {str(tmp_path / 'm.db')!r}, '--profiles',"
        f" {str(tmp_path / 'profiles.yaml')!r}, 'send', {str(tmp_path / 'c.yaml')!r},"
        " '--json', '--max-time', '5s'])\n"
        "sys.stderr.write(json.dumps([code, sorted(sys.modules)]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        timeout=120,
    )
    code, modules = json.loads(done.stderr.splitlines()[-1])
    summary = json.loads(done.stdout)
    assert (summary["sent"], summary["deferred"]) == (0, 1), done.stdout
    assert code in (0, 3)  # 3: the relay needs the operator's attention
    assert "aiosmtplib" in modules  # the send path ran
    assert not [name for name in modules if name == "dns" or name.startswith("dns.")]


def test_a_burst_counts_the_messages_accepted_after_the_refusal_that_taught_it() -> None:
    # Two connections: the receiver took 3 messages, the 4th was refused, and one accepted
    # on the other connection is answered only after that refusal: the burst is 3, not 2.
    pacer = Pacer(AimdPolicy())
    for at in (0.0, 0.01, 0.02, 0.03):
        pacer.permit(at, None)
    pacer.accepted()
    pacer.accepted()
    assert pacer.refused(unpaced=True) is False  # nothing accepted is known yet: a pause
    assert pacer.burst == 2
    pacer.accepted()  # in flight at the refusal
    assert pacer.burst == 3
    # Once the next message is permitted, acceptances are the new window's.
    pacer.permit(6.0, None)
    pacer.accepted()
    assert pacer.burst == 3


@needs_postfix
def test_a_session_the_server_closed_while_idle_is_replaced_before_the_next_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Postfix hangs up on a client idle for 1 s; the lane sends one message every 2 s. The
    # hang-up is seen when it happens, so each message goes out on a fresh session instead
    # of failing on the dead one and waiting out a retry delay.
    with postfix_receiver(smtpd_timeout="1s") as postfix:
        ws = postfix_workspace(tmp_path, postfix.port, rows=3, connections=1, transactional=True)
        profiles = (ws / "profiles.yaml").read_text()
        (ws / "profiles.yaml").write_text(
            profiles.replace("per_minute: null", "per_minute: 30, burst: 1")
        )
        result = send_json(ws, capsys, "--max-time", "60s")
        assert (result["sent"], result["deferred"], result["remaining"]) == (3, 0, 0)
        assert postfix.settled_count("status=sent ", 3) == 3
        assert postfix.count(r"timeout after END-OF-MESSAGE") >= 1


@needs_postfix
def test_the_slow_start_opens_its_second_connection_as_soon_as_it_is_due(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The second connection is due after a few messages accepted on the first; its worker
    # is woken then, not at its next look a fifth of a second later, by when a short
    # campaign has gone out on one connection alone.
    with postfix_receiver() as postfix:
        ws = postfix_workspace(tmp_path, postfix.port, rows=60, connections=2)
        result = send_json(ws, capsys, "--max-time", "60s")
        assert (result["sent"], result["remaining"]) == (60, 0)
        per_session = Counter(re.findall(r"smtpd\[(\d+)\]: [0-9A-F]+: client=", postfix.log))
    assert len(per_session) == 2, per_session
    assert min(per_session.values()) >= 10, per_session
