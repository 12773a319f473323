"""The simulated providers, exercised by real aiosmtplib clients over 127.0.0.1."""

from __future__ import annotations

import asyncio
import email
import json
import mailbox
import re
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Sequence
from email.message import Message
from pathlib import Path
from typing import Any, TypeVar

import aiosmtplib
import pytest

from mailctl.errors import MailctlError, SimError
from mailctl.sim.behaviours import (
    AddressRule,
    CapAction,
    Command,
    Greylist,
    Preset,
    SimBehaviour,
    SimConfig,
    SimTls,
    Stage,
    Throttle,
    preset,
)
from mailctl.sim.dsn import append_to_mbox, iter_mbox
from mailctl.sim.events import RefusalReason, SimEvent, SimEventKind
from mailctl.sim.replies import (
    GOOGLE_NO_SUCH_USER,
    GOOGLE_RATE_LIMITED,
    MICROSOFT_BLOCK_LIST,
    MICROSOFT_RATE_LIMITED,
    YAHOO_TSS04,
    SimReply,
)
from mailctl.sim.servers import run_forever, start
from tests.helpers.clock import FakeClock
from tests.helpers.sim import SimServerFactory

T = TypeVar("T")
SENDER = "bounces+123@news.example.com"


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def message(
    rcpt: str = "alice@example.org", mailctl_id: str = "cmp1-42", body: str = "Hi.\r\n"
) -> bytes:
    return (
        f"From: News <news@example.com>\r\n"
        f"To: <{rcpt}>\r\n"
        f"Subject: November\r\n"
        f"Message-ID: <{mailctl_id}@news.example.com>\r\n"
        f"X-Mailctl-ID: {mailctl_id}\r\n"
        f"\r\n"
        f"{body}"
    ).encode()


def client(port: int, source: str = "127.0.0.2", **options: Any) -> aiosmtplib.SMTP:
    options.setdefault("timeout", 5)
    options.setdefault("start_tls", False)
    return aiosmtplib.SMTP(hostname="127.0.0.1", port=port, source_address=(source, 0), **options)


async def send_one(
    port: int, rcpts: Sequence[str], source: str = "127.0.0.2", sender: str = SENDER, **options: Any
) -> tuple[dict[str, Any], str]:
    """One connection, one message, QUIT (if the server still talks to us)."""
    smtp = client(port, source, **options)
    await smtp.connect()
    try:
        return await smtp.sendmail(sender, list(rcpts), message(rcpts[0]))
    finally:
        if smtp.is_connected:
            try:
                await smtp.quit()
            except aiosmtplib.SMTPException:
                smtp.close()


def parts(multipart: Message) -> list[Message]:
    payload = multipart.get_payload()
    assert isinstance(payload, list)
    return [part for part in payload if isinstance(part, Message)]


def wait_until(predicate: Any, timeout: float = 2.0) -> None:
    # Server-side bookkeeping of a client's disconnect happens on the server's thread.
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


# -- accepting, recording ----------------------------------------------------------------------


def test_accepts_everything_and_records_the_delivery(
    sim_server: SimServerFactory, sim_clock: FakeClock
) -> None:
    server = sim_server(clock=sim_clock)

    errors, reply = run(send_one(server.port, ["alice@example.org", "bob@example.org"]))

    assert errors == {}
    assert reply.startswith("2.0.0 OK queued as ")
    first, second = server.deliveries
    assert (first.rcpt, second.rcpt) == ("alice@example.org", "bob@example.org")
    assert first.mail_from == SENDER
    assert first.message_id == "<cmp1-42@news.example.com>"
    assert first.mailctl_id == "cmp1-42"
    assert first.time == sim_clock()
    assert first.size == len(message("alice@example.org"))
    assert first.queue_id == second.queue_id
    assert server.refusals == []


def test_source_address_of_the_client_is_the_sending_ip(sim_server: SimServerFactory) -> None:
    server = sim_server()

    run(send_one(server.port, ["a@example.org"], source="127.0.0.2"))
    run(send_one(server.port, ["b@example.org"], source="127.0.0.3"))

    assert [d.source_ip for d in server.deliveries] == ["127.0.0.2", "127.0.0.3"]


def test_several_hundred_messages_over_concurrent_connections(sim_server: SimServerFactory) -> None:
    server = sim_server()

    async def lane(source: str, count: int) -> None:
        smtp = client(server.port, source)
        await smtp.connect()
        for n in range(count):
            await smtp.sendmail(SENDER, [f"user{n}@example.org"], message(mailctl_id=f"m{n}"))
        await smtp.quit()

    async def main() -> None:
        await asyncio.gather(*(lane(f"127.0.0.{i}", 100) for i in range(2, 6)))

    run(main())
    assert len(server.deliveries) == 400
    assert {d.source_ip for d in server.deliveries} == {
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
    }


def test_events_reach_the_callback(sim_server: SimServerFactory) -> None:
    events: list[SimEvent] = []
    server = sim_server(on_event=events.append)

    run(send_one(server.port, ["a@example.org"]))

    kinds = [event.kind for event in events]
    assert kinds[0] is SimEventKind.LISTENING
    assert f":{server.port}" in events[0].message
    assert SimEventKind.CONNECTED in kinds and SimEventKind.DELIVERED in kinds


# -- connection-level behaviour ----------------------------------------------------------------


def test_reply_at_connect_refuses_the_session(sim_server: SimServerFactory) -> None:
    server = sim_server(SimBehaviour(connect_reply=SimReply(421, "4.7.0 Try again later")))

    with pytest.raises(aiosmtplib.SMTPConnectResponseError) as caught:
        run(send_one(server.port, ["a@example.org"]))

    assert caught.value.code == 421
    assert "Try again later" in caught.value.message
    (refusal,) = server.refusals
    assert (refusal.stage, refusal.reason, refusal.code) == (
        Stage.CONNECT,
        RefusalReason.CONNECT_REPLY,
        421,
    )
    assert server.deliveries == []


def test_connection_limit_per_source_ip(sim_server: SimServerFactory) -> None:
    server = sim_server(SimBehaviour(max_connections=1))

    async def main() -> None:
        first = client(server.port, "127.0.0.2")
        await first.connect()
        with pytest.raises(aiosmtplib.SMTPConnectResponseError) as caught:
            await client(server.port, "127.0.0.2").connect()
        assert caught.value.code == 421
        assert caught.value.message == "Too many connections"
        other_ip = client(server.port, "127.0.0.3")  # its own limit
        await other_ip.connect()
        await other_ip.quit()
        await first.quit()

    run(main())
    wait_until(lambda: server.open_connections == 0)
    run(send_one(server.port, ["a@example.org"]))  # the slot is free again
    assert [r.reason for r in server.refusals] == [RefusalReason.TOO_MANY_CONNECTIONS]
    assert len(server.deliveries) == 1


def test_yahoo_closes_after_its_cap_without_a_reply(sim_server: SimServerFactory) -> None:
    server = sim_server(preset("yahoo", max_messages_per_connection=3))
    assert server.behaviour.connection_cap_action is CapAction.DISCONNECT

    async def main() -> None:
        smtp = client(server.port)
        await smtp.connect()
        for n in range(3):
            await smtp.sendmail(SENDER, [f"u{n}@yahoo.com"], message())
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await smtp.sendmail(SENDER, ["u3@yahoo.com"], message())

    run(main())
    assert len(server.deliveries) == 3
    assert server.refusals == []  # nothing was said: the connection just closed


def test_messages_per_connection_cap_answers_421(sim_server: SimServerFactory) -> None:
    server = sim_server(SimBehaviour(max_messages_per_connection=2))

    async def main() -> None:
        smtp = client(server.port)
        await smtp.connect()
        for n in range(2):
            await smtp.sendmail(SENDER, [f"u{n}@example.org"], message())
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as caught:
            await smtp.sendmail(SENDER, ["u2@example.org"], message())
        assert caught.value.code == 421
        assert caught.value.message == (
            "Max message per connection reached, closing transmission channel"
        )
        assert not smtp.is_connected

    run(main())
    assert [r.reason for r in server.refusals] == [RefusalReason.CONNECTION_CAP]


# -- recipients and data ------------------------------------------------------------------------


def test_rcpt_rules_by_exact_address_and_regex(sim_server: SimServerFactory) -> None:
    server = sim_server(
        SimBehaviour(
            rcpt_rules=(
                AddressRule("Gone@Example.org", GOOGLE_NO_SUCH_USER),
                AddressRule(re.compile(r"^full"), SimReply(452, "4.2.2 Mailbox full")),
                AddressRule(re.compile(r"@slow\.example$"), SimReply(451, "4.3.0 Try later")),
            )
        )
    )

    errors, _ = run(
        send_one(
            server.port,
            ["ok@example.org", "gone@example.org", "full1@example.org", "x@slow.example"],
        )
    )

    assert {rcpt: response.code for rcpt, response in errors.items()} == {
        "gone@example.org": 550,
        "full1@example.org": 452,
        "x@slow.example": 451,
    }
    assert errors["gone@example.org"].message.startswith("5.1.1 The email account")
    assert [d.rcpt for d in server.deliveries] == ["ok@example.org"]
    assert {r.rcpt for r in server.refusals} == set(errors)


def test_all_recipients_refused_raises_with_their_codes(sim_server: SimServerFactory) -> None:
    server = sim_server(
        SimBehaviour(rcpt_rules=(AddressRule("gone@example.org", GOOGLE_NO_SUCH_USER),))
    )
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as caught:
        run(send_one(server.port, ["gone@example.org"]))
    assert caught.value.recipients[0].code == 550


def test_data_reply_override_refuses_the_message_at_data(sim_server: SimServerFactory) -> None:
    policy = SimReply(554, "5.7.1 Message rejected for policy reasons")
    server = sim_server(SimBehaviour(data_reply=policy))

    with pytest.raises(aiosmtplib.SMTPDataError) as caught:
        run(send_one(server.port, ["a@example.org"]))

    assert (caught.value.code, caught.value.message) == (554, policy.text)
    assert server.deliveries == []
    assert [(r.stage, r.reason) for r in server.refusals] == [
        (Stage.DATA, RefusalReason.DATA_REPLY)
    ]


def test_dropped_mid_data_is_never_a_250(sim_server: SimServerFactory) -> None:
    server = sim_server(SimBehaviour(drop_data_for=(re.compile(r"^drop"),)))

    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        run(send_one(server.port, ["drop-me@example.org"]))
    run(send_one(server.port, ["keep@example.org"]))

    assert [d.rcpt for d in server.deliveries] == ["keep@example.org"]
    (refusal,) = server.refusals
    assert (refusal.reason, refusal.code, refusal.rcpt) == (
        RefusalReason.DROPPED,
        None,
        "drop-me@example.org",
    )


def test_every_nth_message_is_dropped_by_disconnecting(sim_server: SimServerFactory) -> None:
    server = sim_server(SimBehaviour(drop_every_nth_message=3))

    async def main() -> list[str]:
        outcomes = []
        smtp = client(server.port)
        for n in range(6):
            if not smtp.is_connected:
                await smtp.connect()
            try:
                await smtp.sendmail(SENDER, [f"u{n}@example.org"], message())
                outcomes.append("ok")
            except aiosmtplib.SMTPServerDisconnected:
                outcomes.append("dropped")
        return outcomes

    assert run(main()) == ["ok", "ok", "dropped", "ok", "ok", "dropped"]
    assert len(server.deliveries) == 4


def test_slow_replies_delay_each_command(sim_server: SimServerFactory) -> None:
    server = sim_server(SimBehaviour(delays={"RCPT": 0.05, Command.DATA: 0.3}))

    async def main() -> None:
        started = time.monotonic()
        smtp = client(server.port, timeout=0.1)
        await smtp.connect()
        await smtp.ehlo()
        await smtp.mail(SENDER)
        await smtp.rcpt("a@example.org")
        assert time.monotonic() - started >= 0.05
        with pytest.raises(aiosmtplib.SMTPTimeoutError):
            await smtp.data(message())  # the final reply takes longer than the client waits

    run(main())


# -- throttling and greylisting -----------------------------------------------------------------


def test_throttle_counts_per_source_ip_in_a_window(
    sim_server: SimServerFactory, sim_clock: FakeClock
) -> None:
    server = sim_server(
        preset("google", throttle=Throttle(max_messages=2, window=60, reply=GOOGLE_RATE_LIMITED)),
        clock=sim_clock,
    )

    for n in range(2):
        run(send_one(server.port, [f"a{n}@gmail.com"], source="127.0.0.2"))
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as caught:
        run(send_one(server.port, ["a2@gmail.com"], source="127.0.0.2"))
    throttled = caught.value.recipients[0]
    assert throttled.code == 421
    assert throttled.message.startswith("4.7.28 [127.0.0.2] Our system has detected")

    for n in range(2):  # another sending IP has its own counter
        run(send_one(server.port, [f"b{n}@gmail.com"], source="127.0.0.3"))

    sim_clock.advance(61)  # the window has passed
    run(send_one(server.port, ["a3@gmail.com"], source="127.0.0.2"))

    assert len(server.deliveries) == 5
    (refusal,) = server.refusals
    assert (refusal.source_ip, refusal.reason) == ("127.0.0.2", RefusalReason.THROTTLE)


def test_throttle_at_data_and_per_day(sim_server: SimServerFactory, sim_clock: FakeClock) -> None:
    server = sim_server(
        preset(
            "microsoft",
            throttle=Throttle(
                max_messages=2,
                window=60,
                reply=MICROSOFT_RATE_LIMITED,
                max_per_day=3,
                day_reply=MICROSOFT_BLOCK_LIST,
                stage=Stage.DATA,
            ),
        ),
        clock=sim_clock,
    )

    async def main() -> list[int]:
        codes = []
        smtp = client(server.port)
        await smtp.connect()
        for n in range(4):
            try:
                await smtp.sendmail(SENDER, [f"u{n}@outlook.com"], message())
                codes.append(250)
            except aiosmtplib.SMTPDataError as error:
                codes.append(error.code)
                assert "(S775)" in error.message and "[127.0.0.2]" in error.message
            sim_clock.advance(1)
        sim_clock.advance(120)  # window clear, but the day's volume is used up after one more
        for n in range(2):
            try:
                await smtp.sendmail(SENDER, [f"v{n}@outlook.com"], message())
                codes.append(250)
            except aiosmtplib.SMTPDataError as error:
                codes.append(error.code)
                assert "(S3150)" in error.message
        await smtp.quit()
        return codes

    assert run(main()) == [250, 250, 451, 451, 250, 550]


def test_greylisting_with_an_advanced_clock(
    sim_server: SimServerFactory, sim_clock: FakeClock
) -> None:
    server = sim_server(SimBehaviour(greylist=Greylist(delay=300)), clock=sim_clock)

    def attempt(rcpt: str = "a@example.org", sender: str = SENDER) -> int:
        try:
            run(send_one(server.port, [rcpt], sender=sender))
        except aiosmtplib.SMTPRecipientsRefused as error:
            refused = error.recipients[0]
            assert refused.message == (
                f"4.7.1 <{rcpt}>: Recipient address rejected: Greylisted for 5 minutes"
            )
            return refused.code
        return 250

    assert attempt() == 451
    sim_clock.advance(60)
    assert attempt() == 451  # too early: same answer
    sim_clock.advance(241)
    assert attempt() == 250
    assert attempt() == 250  # the triple stays known
    assert attempt(sender="other@example.com") == 451  # a new triple waits again
    assert [r.reason for r in server.refusals] == [RefusalReason.GREYLIST] * 3


# -- what gets written -------------------------------------------------------------------------


def test_asynchronous_bounce_is_an_rfc3464_dsn_in_the_mbox(
    sim_server: SimServerFactory, tmp_path: Path
) -> None:
    mbox_path = tmp_path / "bounces.mbox"
    server = sim_server(
        SimBehaviour(
            bounce_rules=(
                AddressRule(re.compile(r"^late"), SimReply(550, "5.1.1 <{rcpt}>: user unknown")),
            )
        ),
        mbox=mbox_path,
    )

    errors, _ = run(send_one(server.port, ["late1@example.org", "fine@example.org"]))
    run(send_one(server.port, ["late2@example.org"]))

    assert errors == {}  # accepted first, bounced afterwards
    assert len(server.deliveries) == 3
    dsns = list(iter_mbox(mbox_path))
    assert len(dsns) == 2
    dsn = email.message_from_bytes(dsns[0].as_bytes())
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["To"] == f"<{SENDER}>"
    notification, status, original = parts(dsn)
    assert notification.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    per_message, per_recipient = parts(status)
    assert per_message["Reporting-MTA"] == "dns; mx.sim.invalid"
    assert per_recipient["Final-Recipient"] == "rfc822; late1@example.org"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 <late1@example.org>: user unknown"
    assert original.get_content_type() == "text/rfc822-headers"
    original_headers = original.get_payload()
    assert isinstance(original_headers, str)
    headers = email.message_from_string(original_headers)
    assert headers["X-Mailctl-ID"] == "cmp1-42"
    assert headers["Message-ID"] == "<cmp1-42@news.example.com>"
    assert [b.rcpt for b in server.bounces] == ["late1@example.org", "late2@example.org"]


def test_mbox_escapes_from_lines(tmp_path: Path) -> None:
    path = tmp_path / "box.mbox"
    body = b"Subject: x\n\nFrom the start\n>From quoted\nend"
    append_to_mbox(path, body, 0.0)
    append_to_mbox(path, body, 0.0)

    raw = path.read_bytes()
    assert raw.startswith(b"From MAILER-DAEMON Thu Jan  1 00:00:00 1970\n")
    messages = list(iter_mbox(path))
    assert len(messages) == 2
    assert messages[0].get_payload() == ">From the start\n>>From quoted\nend\n"


def test_jsonl_log_has_one_line_per_accepted_recipient(
    sim_server: SimServerFactory, tmp_path: Path
) -> None:
    log = tmp_path / "log" / "sim.jsonl"
    server = sim_server(
        SimBehaviour(rcpt_rules=(AddressRule("no@example.org", GOOGLE_NO_SUCH_USER),)), jsonl=log
    )

    run(send_one(server.port, ["a@example.org", "no@example.org", "b@example.org"]))

    lines = [json.loads(line) for line in log.read_text().splitlines()]  # while still running
    assert [line["rcpt"] for line in lines] == ["a@example.org", "b@example.org"]
    assert lines[0]["mailctl_id"] == "cmp1-42"
    assert lines[0]["source_ip"] == "127.0.0.2"
    assert lines[0]["provider"] == "sandbox"


def test_maildir_stores_each_accepted_recipient(
    sim_server: SimServerFactory, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    server = sim_server(maildir=outbox)

    run(send_one(server.port, ["a@example.org", "b@example.org"]))

    box = mailbox.Maildir(outbox, create=False)
    stored = sorted((m["Delivered-To"], m["X-Mailctl-ID"], m.get_payload()) for m in box)
    assert stored == [("a@example.org", "cmp1-42", "Hi.\n"), ("b@example.org", "cmp1-42", "Hi.\n")]
    assert list((outbox / "tmp").iterdir()) == []
    assert server.deliveries[0].queue_id in next(iter(box))["Received"]


# -- runners ----------------------------------------------------------------------------------


def test_in_loop_server_with_maildir(tmp_path: Path) -> None:
    async def main() -> None:
        server = await start(SimConfig(maildir=tmp_path / "outbox"))
        try:
            await send_one(server.port, ["a@example.org"])
            assert [d.rcpt for d in server.deliveries] == ["a@example.org"]
        finally:
            await server.close()
        with pytest.raises(ConnectionError):
            await client(server.port).connect()

    run(main())
    assert len(mailbox.Maildir(tmp_path / "outbox", create=False)) == 1


def test_stop_while_clients_are_connected(sim_server: SimServerFactory) -> None:
    server = sim_server(SimBehaviour(delays={Command.RCPT: 30}))

    async def main() -> None:
        idle = client(server.port)
        await idle.connect()
        waiting = client(server.port, "127.0.0.3", timeout=30)
        await waiting.connect()
        await waiting.ehlo()
        await waiting.mail(SENDER)
        stuck = asyncio.create_task(waiting.rcpt("a@example.org"))  # server sleeps 30 s
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await asyncio.to_thread(server.stop)
        assert time.monotonic() - started < 2
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await stuck
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await idle.noop()

    run(main())
    server.stop()  # idempotent; the fixture stops it once more


def test_required_starttls_refuses_plain_mail_with_530(sim_server: SimServerFactory) -> None:
    pytest.importorskip("cryptography")
    server = sim_server(tls=SimTls.REQUIRE)

    with pytest.raises(aiosmtplib.SMTPSenderRefused) as caught:
        run(send_one(server.port, ["a@example.org"]))
    assert caught.value.code == 530

    run(send_one(server.port, ["tls@example.org"], start_tls=True, validate_certs=False))

    (delivery,) = server.deliveries
    assert (delivery.rcpt, delivery.source_ip) == ("tls@example.org", "127.0.0.2")


def test_run_forever_until_stopped() -> None:
    events: list[SimEvent] = []
    listening = threading.Event()
    stop = threading.Event()

    def on_event(event: SimEvent) -> None:
        events.append(event)
        if event.kind is SimEventKind.LISTENING:
            listening.set()

    thread = threading.Thread(
        target=run_forever,
        args=(SimConfig(preset("google")),),
        kwargs={"on_event": on_event, "stop": stop},
    )
    thread.start()
    try:
        assert listening.wait(5)
        port = int(events[0].message.rsplit(":", 1)[1])
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as caught:
            run(send_one(port, ["unknown-7@gmail.com"]))
        assert "?p=NoSuchUser" in caught.value.recipients[0].message
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert events[-1].kind is SimEventKind.STOPPED


# -- presets and validation ------------------------------------------------------------------


def test_presets_bundle_provider_defaults_and_stay_overridable() -> None:
    yahoo = preset(Preset.YAHOO)
    assert yahoo.max_messages_per_connection == 20
    assert yahoo.connection_cap_action is CapAction.DISCONNECT
    assert yahoo.throttle is not None and "[TSS04]" in yahoo.throttle.reply.text
    assert preset("microsoft").throttle.day_reply == MICROSOFT_BLOCK_LIST  # type: ignore[union-attr]
    assert preset("google", max_messages_per_connection=5).max_messages_per_connection == 5
    assert preset("generic").name == "generic"
    assert preset("sandbox") == SimBehaviour()


def test_google_preset_rehearsal_addresses(sim_server: SimServerFactory, tmp_path: Path) -> None:
    server = sim_server(preset("google"), mbox=tmp_path / "b.mbox")

    errors, _ = run(
        send_one(
            server.port,
            [
                "someone@gmail.com",
                "unknown-1@gmail.com",
                "overquota@gmail.com",
                "bounce-2@gmail.com",
            ],
        )
    )

    assert {rcpt: r.code for rcpt, r in errors.items()} == {
        "unknown-1@gmail.com": 550,
        "overquota@gmail.com": 452,
    }
    assert [b.rcpt for b in server.bounces] == ["bounce-2@gmail.com"]


def test_invalid_behaviour_is_a_mailctl_error() -> None:
    with pytest.raises(SimError):
        SimBehaviour(max_connections=0)
    with pytest.raises(MailctlError, match="valid: sandbox, generic, google"):
        preset("hotmail")
    with pytest.raises(SimError):
        Throttle(stage=Stage.MAIL)
    assert SimBehaviour(delays={"rcpt": 1}).delays == {Command.RCPT: 1.0}


def test_port_in_use_is_a_sim_error(sim_server: SimServerFactory) -> None:
    server = sim_server()
    with pytest.raises(SimError, match="cannot listen"):
        sim_server(port=server.port, host="127.0.0.1")


def test_null_sender_is_accepted_but_never_bounced(
    sim_server: SimServerFactory, tmp_path: Path
) -> None:
    server = sim_server(
        SimBehaviour(bounce_rules=(AddressRule("a@example.org", GOOGLE_NO_SUCH_USER),)),
        mbox=tmp_path / "b.mbox",
    )

    run(send_one(server.port, ["a@example.org"], sender=""))

    assert [d.mail_from for d in server.deliveries] == [""]
    assert server.bounces == []
    assert not (tmp_path / "b.mbox").exists()


def test_a_subprocess_delivers_to_the_threaded_server(
    sim_server: SimServerFactory, tmp_path: Path
) -> None:
    log = tmp_path / "sim.jsonl"
    server = sim_server(jsonl=log)
    script = (
        "import smtplib, sys\n"
        "with smtplib.SMTP('127.0.0.1', int(sys.argv[1]), source_address=('127.0.0.3', 0)) as s:\n"
        "    s.sendmail(sys.argv[2], ['sub@example.org'], sys.stdin.buffer.read())\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(server.port), SENDER],
        input=message("sub@example.org", "sub-1"),
        check=True,
        timeout=30,
    )

    (line,) = [json.loads(text) for text in log.read_text().splitlines()]
    assert (line["rcpt"], line["mailctl_id"], line["source_ip"]) == (
        "sub@example.org",
        "sub-1",
        "127.0.0.3",
    )


def test_throttle_at_connect_answers_421_at_the_banner(
    sim_server: SimServerFactory, sim_clock: FakeClock
) -> None:
    server = sim_server(
        preset(
            "yahoo",
            throttle=Throttle(max_messages=1, window=3600, reply=YAHOO_TSS04, stage=Stage.CONNECT),
        ),
        clock=sim_clock,
    )

    run(send_one(server.port, ["a@yahoo.com"]))
    with pytest.raises(aiosmtplib.SMTPConnectResponseError) as caught:
        run(send_one(server.port, ["b@yahoo.com"]))

    assert caught.value.code == 421
    assert caught.value.message.startswith("4.7.0 [TSS04] Messages from 127.0.0.2 temporarily")
    run(send_one(server.port, ["c@yahoo.com"], source="127.0.0.3"))
    assert [d.rcpt for d in server.deliveries] == ["a@yahoo.com", "c@yahoo.com"]
