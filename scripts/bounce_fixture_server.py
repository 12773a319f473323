"""A refusing destination and a bounce sink in one aiosmtpd server, for make_bounce_fixtures.sh.

The recipient's local part picks the behaviour (see ``BEHAVIOURS``): the MTA under test relays
to this server, which refuses with a fixed, realistic reply at RCPT or after DATA. Every other
recipient is accepted; mail to ``sender.test`` (the bounces the MTA writes back to our
envelope sender) is appended to an mbox, everything else is dropped.

    python3 scripts/bounce_fixture_server.py --port 2601 --mbox /tmp/x/bounces.mbox
"""

from __future__ import annotations

import argparse
import asyncio
import mailbox
import signal
from dataclasses import dataclass
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass(frozen=True)
class Behaviour:
    """One refusal: the reply, and whether it comes at RCPT or after DATA."""

    stage: str  # "rcpt" or "data"
    reply: str  # may be multi-line; "{rcpt}" is replaced by the recipient


# Keyed by local-part prefix; the labels in make_bounce_fixtures.sh are written from these.
BEHAVIOURS: dict[str, Behaviour] = {
    "unknown-rcpt": Behaviour(
        "rcpt",
        "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table",
    ),
    "unknown-data": Behaviour(
        "data",
        "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
        "550-5.1.1 double-checking the recipient's email address for typos or\r\n"
        "550 5.1.1 unnecessary spaces. For more information, ask your administrator.",
    ),
    "full": Behaviour(
        "data", "552 5.2.2 <{rcpt}>: Mailbox full: quota exceeded (user has 102400/102400 KB)"
    ),
    "dmarc": Behaviour(
        "data",
        "550-5.7.1 Unauthenticated email from sender.test is not accepted due to domain's\r\n"
        "550 5.7.1 DMARC policy. Please contact the administrator of sender.test domain.",
    ),
    "later": Behaviour("rcpt", "451 4.3.0 <{rcpt}>: Temporary lookup failure, try again later"),
}
RELAY_DENIED = Behaviour("rcpt", "554 5.7.1 <{rcpt}>: Relay access denied")


def behaviour_of(address: str) -> Behaviour | None:
    """The refusal for ``address``, or None when it is accepted."""
    local, _, domain = address.lower().rpartition("@")
    if domain == "norelay.test":
        return RELAY_DENIED
    for prefix, behaviour in BEHAVIOURS.items():
        if local.startswith(prefix):
            return behaviour
    return None


class RefuseOrSink:
    """Refuse the scripted recipients; append mail for sender.test to the mbox."""

    def __init__(self, mbox: Path) -> None:
        self.mbox = mbox

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        behaviour = behaviour_of(address)
        if behaviour is not None and behaviour.stage == "rcpt":
            return behaviour.reply.format(rcpt=address)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        for address in envelope.rcpt_tos:
            behaviour = behaviour_of(address)
            if behaviour is not None and behaviour.stage == "data":
                return behaviour.reply.format(rcpt=address)
        if any(a.lower().endswith("@sender.test") for a in envelope.rcpt_tos):
            content = envelope.original_content or b""
            box = mailbox.mbox(self.mbox)
            try:
                box.lock()
                message = mailbox.mboxMessage(content)
                message.set_from(envelope.mail_from or "MAILER-DAEMON")
                box.add(message)
                box.flush()
            finally:
                box.unlock()
                box.close()
        return "250 2.0.0 Ok: queued"


async def serve(port: int, mbox: Path) -> None:
    # The MTAs under test must see a stable banner host name, not this machine's.
    controller = Controller(
        RefuseOrSink(mbox), hostname="127.0.0.1", port=port, server_hostname="mx.dest.test"
    )
    controller.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        controller.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mbox", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.mbox))


if __name__ == "__main__":
    main()
