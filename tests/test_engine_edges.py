"""Edge cases of the send loop found in review: stop paths, stage-aware refusals, template
failures at run time, and domains whose DNS never answers. Real SMTP, real SQLite."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import textwrap
from pathlib import Path

import pytest

from mailctl.config.profiles import load_profiles
from mailctl.delivery.campaigns import prepare
from mailctl.delivery.context import SendOptions
from mailctl.delivery.dispatch import Dispatcher
from mailctl.delivery.engine import Engine
from mailctl.delivery.outcome import asked_back_to
from mailctl.errors import DnsTimeout
from mailctl.sim.behaviours import CapAction, SimBehaviour
from mailctl.sim.replies import SimReply
from mailctl.store.sqlite import SqliteStore
from tests.helpers.clock import FakeClock
from tests.helpers.postfix import have_postfix, postfix_receiver
from tests.helpers.workspace import (
    cli,
    db_rows,
    db_states,
    make_workspace,
    postfix_workspace,
    send,
    summary,
    workspace_engine,
)


def start_engine(ws: Path, store: SqliteStore, **options: object) -> Engine:
    return workspace_engine(store, ws, SendOptions(**options))


def test_second_stop_returns_at_once_and_leaves_nothing_in_sending(
    sim_server, tmp_path: Path
) -> None:
    server = sim_server(SimBehaviour(delays={"DATA": 5.0}))
    ws = make_workspace(tmp_path, server.port, rows=400)
    with SqliteStore.open(ws / "m.db") as store:
        engine = start_engine(ws, store)

        async def main() -> None:
            task = asyncio.create_task(engine.run())
            await asyncio.sleep(1.0)
            engine.request_stop()
            await asyncio.sleep(0.1)
            engine.request_stop()  # the second Ctrl-C
            done, _ = await asyncio.wait({task}, timeout=10)
            assert done, "a second stop must not hang on a full connection queue"
            assert task.result().stop_reason == "interrupted"

        asyncio.run(main())
    states = (
        sqlite3.connect(ws / "m.db")
        .execute("SELECT state, possible_duplicate, count(*) FROM messages GROUP BY 1, 2")
        .fetchall()
    )
    assert {(s, d) for s, d, _ in states} <= {("queued", 0), ("queued", 1)}
    # The one cut off mid-DATA: nothing was accepted yet, so the slow start had opened only
    # one connection of the three.
    assert sum(n for s, d, n in states if d == 1) == 1


def test_stop_grace_expiry_requeues_and_flags_what_was_in_flight(
    sim_server, tmp_path: Path
) -> None:
    server = sim_server(SimBehaviour(delays={"DATA": 5.0}))
    ws = make_workspace(tmp_path, server.port, rows=6)
    with SqliteStore.open(ws / "m.db") as store:
        engine = start_engine(ws, store, stop_grace=0.5)

        async def main() -> None:
            task = asyncio.create_task(engine.run())
            await asyncio.sleep(1.0)
            engine.request_stop()
            await asyncio.wait_for(task, timeout=10)

        asyncio.run(main())
    states = dict(
        ((s, d), n)
        for s, d, n in sqlite3.connect(ws / "m.db").execute(
            "SELECT state, possible_duplicate, count(*) FROM messages GROUP BY 1, 2"
        )
    )
    # One in flight (the slow start's single connection, nothing accepted yet), five queued.
    assert states == {("queued", 0): 5, ("queued", 1): 1}


@pytest.mark.parametrize(
    "behaviour",
    [
        # After DATA, "user unknown" is a filter's answer, not a missing mailbox.
        SimBehaviour(data_reply=SimReply(550, "5.7.1 No such user")),
        # A refusal of MAIL FROM (here the server's per-connection cap answers the second
        # MAIL with it) is about the sender, however it is worded.
        SimBehaviour(
            max_messages_per_connection=1,
            connection_cap_action=CapAction.REPLY,
            connection_cap_reply=SimReply(550, "5.1.0 <{sender}>... User unknown"),
        ),
    ],
    ids=["data", "mail"],
)
def test_user_unknown_at_mail_or_data_never_suppresses(
    sim_server, behaviour: SimBehaviour, tmp_path: Path, capsys
) -> None:
    server = sim_server(behaviour)
    ws = make_workspace(tmp_path, server.port, rows=6)
    code = cli(ws, "send", str(ws / "c.yaml"), "--json")
    stopped = json.loads(capsys.readouterr().out)["stopped_campaigns"]
    assert code == (3 if stopped else 0)  # a refusal of the sender stops the campaign: exit 3
    with SqliteStore.open(ws / "m.db") as store:
        assert list(store.iter_suppression()) == []


def test_a_template_failing_on_one_recipient_fails_that_message_only(
    sim_server, tmp_path: Path, capsys
) -> None:
    server = sim_server()
    ws = make_workspace(tmp_path, server.port, rows=6)
    text = (
        (ws / "c.yaml")
        .read_text()
        .replace('text: "Hi {{ first_name }}', 'text: "Hi {{ 100 // (first_name|length - 5) }}')
    )
    (ws / "c.yaml").write_text(text)
    assert send(ws) == 0
    result = json.loads(capsys.readouterr().out)
    # "User0".."User5" all have length 5: every one divides by zero, each fails on its own.
    assert (result["failed"], result["remaining"]) == (6, 0)
    assert db_states(ws) == {"failed": 6}
    reasons = {r[0] for r in sqlite3.connect(ws / "m.db").execute("SELECT reason FROM messages")}
    assert reasons == {"template"}


class DeadDns:
    async def mx(self, name: str) -> object:
        raise DnsTimeout(f"{name}: SERVFAIL")

    async def addresses(self, name: str) -> object:
        raise DnsTimeout(f"{name}: SERVFAIL")


def test_a_domain_whose_dns_never_answers_expires_at_max_age(tmp_path: Path) -> None:
    (tmp_path / "profiles.yaml").write_text(
        textwrap.dedent("""\
        profiles:
          direct:
            transport: direct
            helo: mta.example.com
            preflight: false
            max_age: 1h
            retry: [5m, 10m]
            pools: {marketing: [127.0.0.1]}
        """)
    )
    (tmp_path / "l.csv").write_text("email\nx@lame-delegation.example\n")
    (tmp_path / "c.yaml").write_text(
        textwrap.dedent("""\
        name: c
        from: "News <news@example.com>"
        subject: hi
        text: hello
        recipients: l.csv
        unsubscribe: {url: "https://example.com/u"}
        """)
    )
    clock = FakeClock()
    with SqliteStore.open(tmp_path / "m.db") as store:
        prepared = prepare(
            store, tmp_path / "c.yaml", load_profiles(tmp_path / "profiles.yaml"), now=clock.now()
        )
        engine = Engine(
            store,
            [prepared.job],
            run_id=store.start_run(1, "t", clock.now()),
            clock=clock,
            resolver=DeadDns(),
            options=SendOptions(max_time=6 * 3600, wait=True),
        )
        summary = asyncio.run(engine.run())
        state, attempts = store.conn.execute("SELECT state, attempts FROM messages").fetchone()
    assert (state, attempts) == ("expired", 0)
    assert summary.remaining == 0


def test_only_a_reply_that_names_a_delay_asks_for_the_same_ip_again() -> None:
    greylisted = "451 4.7.1 <a@b.example>: Recipient address rejected: Greylisted for 2 minutes"
    row = {"ip": "127.0.0.2", "last_code": 451, "last_reply": greylisted}
    assert asked_back_to(row) == "127.0.0.2"
    assert asked_back_to({**row, "last_reply": "451 4.3.0 Try again later"}) is None
    assert asked_back_to({**row, "last_code": 550}) is None
    assert asked_back_to({**row, "ip": None}) is None
    assert asked_back_to({"ip": None, "last_code": None, "last_reply": None}) is None


def test_the_first_connection_opens_while_the_first_claim_is_still_rendering(
    sim_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A claim of 256 rendered in one go on the event loop kept the run's first connection
    # unopened, and every open one waiting for its replies, until the last was rendered.
    # Now each few rendered go to the connections at once, and the loop runs between
    # (for a moment, while a connection opens).
    from mailctl.delivery.transport import Connection
    from mailctl.message.render import Renderer

    events: list[str] = []
    render, connect = Renderer.render, Connection.open

    def rendering(self: Renderer, *args: object, **kwargs: object) -> object:
        events.append("render")
        return render(self, *args, **kwargs)  # type: ignore[arg-type]

    async def opening(self: Connection, *args: object) -> object:
        events.append("open")
        try:
            return await connect(self, *args)  # type: ignore[arg-type]
        finally:
            events.append("opened")

    monkeypatch.setattr(Renderer, "render", rendering)
    monkeypatch.setattr(Connection, "open", opening)
    server = sim_server(SimBehaviour())
    ws = make_workspace(tmp_path, server.port, rows=256)
    with SqliteStore.open(ws / "m.db") as store:
        summary = asyncio.run(start_engine(ws, store).run())
    assert summary.sent == 256 and events.count("render") == 256
    assert events.index("open") <= 48, "the connection waited for the rendering"
    # Opening takes several turns of the loop (connect, greeting, EHLO): with one turn
    # between chunks it finished only once 209 of the 256 were rendered (now ~33: the
    # first claim is one chunk, and the loop is left to the network while it opens).
    assert events.index("opened") <= 64, "the connection's opening waited for the rendering"


@pytest.mark.skipif(not have_postfix(), reason="Postfix is not installed")
def test_a_fault_in_a_delivery_worker_stops_the_run_loudly_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A bug (here one forced into the bookkeeping after the fifth reply) used to end its
    # worker in silence, its message forgotten while still claimed: the run waited for it
    # until --max-time (for ever without one). Now the run stops and says so (exit 1),
    # and nothing the worker held is lost: the fifth, delivered but not recorded, is
    # queued as a possible duplicate; the sixth, whose commands went out behind it, was
    # never sent (the server dropped it) and is queued.
    original = Dispatcher._after_reply
    calls = 0

    def after_reply(self: Dispatcher, *args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise RuntimeError("a fault forced by the test")
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Dispatcher, "_after_reply", after_reply)
    with postfix_receiver() as postfix:
        ws = postfix_workspace(tmp_path, postfix.port, 20, connections=1)
        assert send(ws) == 1
        err = capsys.readouterr().err
        assert "a delivery worker failed (RuntimeError: a fault forced by the test)" in err
        states = db_rows(
            ws, "SELECT state, possible_duplicate, count(*) FROM messages GROUP BY 1, 2"
        )
        assert {(state, dup): n for state, dup, n in states} == {
            ("sent", 0): 4,
            ("queued", 1): 1,
            ("queued", 0): 15,
        }
        assert postfix.settled_count("status=sent ", 5) == 5
        monkeypatch.undo()
        # The next run sends the rest, and the possible duplicate again, as after a stop
        # whose grace ran out: a message is never lost for fear of sending it twice.
        assert send(ws) == 0
        assert summary(capsys)["sent"] == 16
        assert postfix.settled_count("status=sent ", 21) == 21
        assert db_states(ws) == {"sent": 20}
