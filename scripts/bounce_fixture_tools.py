"""Helpers for make_bounce_fixtures.sh: submit the test messages, wait for and split the bounces.

python3 scripts/bounce_fixture_tools.py send --port 2525 --case userunknown-rcpt RCPT...
python3 scripts/bounce_fixture_tools.py wait --mbox F --timeout 120 CASE...
python3 scripts/bounce_fixture_tools.py split --mbox F --out tests/data/mta_bounces/postfix
python3 scripts/bounce_fixture_tools.py labels --root tests/data/mta_bounces
"""

from __future__ import annotations

import argparse
import json
import mailbox
import re
import smtplib
import sys
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path

SENDER = "sender@sender.test"
CASE_HEADER = "X-Fixture-Case"
# A bounce for the "expired" case that is only a warning (the message is still queued).
_DELAY_SUBJECT = re.compile(r"delay|warning|still being retried", re.I)
# OpenSMTPD 6.8 reports the final expiry as "delayed" too, but says the envelope expired.
_EXPIRY_NOTICE = re.compile(rb"Envelope expired")
_CASE = re.compile(rb"^X-Fixture-Case: *([a-z0-9-]+)", re.M | re.I)


@dataclass(frozen=True)
class Label:
    """What a case's bounce must report: written from the setup, never from a parser."""

    recipients: tuple[str, ...]
    permanent: bool
    status: str  # the fixture server's reply, or for local failures the code the failure means
    reason: str  # Sisimai vocabulary
    suppress: bool
    kind: str = "bounce"


# Mirrors BEHAVIOURS in bounce_fixture_server.py and send_cases in make_bounce_fixtures.sh;
# "{domain}" is the MTA's own local domain. Only an unknown user is the recipient's own
# permanent fault, so only those suppress. The 4xx that expired was never a permanent reply.
LABELS: dict[str, Label] = {
    "userunknown-rcpt": Label(("unknown-rcpt@dest.test",), True, "5.1.1", "userunknown", True),
    "userunknown-data": Label(("unknown-data@dest.test",), True, "5.1.1", "userunknown", True),
    "userunknown-mixed": Label(
        ("unknown-rcpt-a@dest.test", "unknown-rcpt-b@dest.test"), True, "5.1.1", "userunknown", True
    ),
    "mailboxfull": Label(("full@dest.test",), True, "5.2.2", "mailboxfull", False),
    "norelaying": Label(("someone@norelay.test",), True, "5.7.1", "norelaying", False),
    "authfailure": Label(("dmarc@dest.test",), True, "5.7.1", "authfailure", False),
    "expired": Label(("later@dest.test",), False, "4.3.0", "expired", False),
    "delayed": Label(("later@dest.test",), False, "4.3.0", "expired", False, kind="delay"),
    "local-userunknown": Label(("nosuchuser@{domain}",), True, "5.1.1", "userunknown", True),
    "local-mailboxfull": Label(("full@quota.{domain}",), True, "5.2.2", "mailboxfull", False),
}


def write_labels(root: Path) -> None:
    """Write ``root/labels.json`` for every ``root/<mta>/<case>.eml`` present."""
    labels: dict[str, dict[str, object]] = {}
    for path in sorted(root.glob("*/*.eml")):
        mta, case = path.parent.name, path.stem
        domain = mta.split("-")[0] + ".test"  # sendmail-mime is still sendmail.test
        label = LABELS[case]
        labels[f"{mta}/{path.name}"] = {
            "recipients": [r.format(domain=domain) for r in label.recipients],
            "permanent": label.permanent,
            "status": label.status,
            "reason": label.reason,
            "suppress": label.suppress,
            "kind": label.kind,
        }
    (root / "labels.json").write_text(json.dumps(labels, indent=2) + "\n")


def test_message(case: str, recipients: list[str], sender: str) -> EmailMessage:
    """The small message sent for ``case``; its X-Fixture-Case header names the bounce."""
    message = EmailMessage()
    message["From"] = f"Sender <{sender}>"
    message["To"] = ", ".join(recipients)
    message["Subject"] = f"Fixture {case}"
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = f"<{case}.{int(time.time())}@sender.test>"
    message[CASE_HEADER] = case
    message.set_content(f"Test message for the {case} bounce fixture.\n")
    return message


def send(port: int, case: str, recipients: list[str], sender: str) -> None:
    """Submit one small message over SMTP; refusals at RCPT are the MTA's to report later."""
    message = test_message(case, recipients, sender)
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.sender.test", timeout=30) as smtp:
        refused = smtp.send_message(message, from_addr=sender, to_addrs=recipients)
    if refused:
        sys.exit(f"{case}: the MTA itself refused {refused}; it should accept and bounce later")


def bounces_by_case(mbox: Path) -> dict[str, bytes]:
    """The first bounce of each case in the mbox; the expired case's warning is "delayed"."""
    found: dict[str, bytes] = {}
    if not mbox.exists():
        return found
    for message in mailbox.mbox(mbox):
        raw = message.as_bytes(unixfrom=False)
        header = _CASE.search(raw)
        if header is None:
            sys.exit(f"{mbox}: a bounce without the returned {CASE_HEADER} header")
        case = header.group(1).decode()
        warning = _DELAY_SUBJECT.search(str(message["Subject"] or "")) is not None
        if warning and not _EXPIRY_NOTICE.search(raw):
            if case != "expired":
                continue  # only the 4xx case is meant to warn; wait for the real bounce
            case = "delayed"
        found.setdefault(case, raw)  # a second warning for the same message adds nothing
    return found


def wait(mbox: Path, cases: list[str], timeout: float) -> None:
    """Wait until the mbox holds a bounce for every case, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    missing = set(cases)
    while time.monotonic() < deadline:
        missing = set(cases) - set(bounces_by_case(mbox))
        if not missing:
            return
        time.sleep(1)
    sys.exit(f"{mbox}: no bounce for {sorted(missing)} after {timeout:.0f}s")


def split(mbox: Path, out: Path) -> None:
    """Write each bounce to ``out/<case>.eml``, named after the case of the message it returns."""
    out.mkdir(parents=True, exist_ok=True)
    for case, raw in sorted(bounces_by_case(mbox).items()):
        target = out / f"{case}.eml"
        target.write_bytes(raw)
        print(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p_send = commands.add_parser("send")
    p_send.add_argument("--port", type=int, required=True)
    p_send.add_argument("--case", required=True)
    p_send.add_argument("--sender", default=SENDER)
    p_send.add_argument("recipients", nargs="+")
    p_message = commands.add_parser("message", help="print the message, for command-line MTAs")
    p_message.add_argument("--case", required=True)
    p_message.add_argument("--sender", default=SENDER)
    p_message.add_argument("recipients", nargs="+")
    p_wait = commands.add_parser("wait")
    p_wait.add_argument("--mbox", type=Path, required=True)
    p_wait.add_argument("--timeout", type=float, required=True)
    p_wait.add_argument("cases", nargs="+")
    p_split = commands.add_parser("split")
    p_split.add_argument("--mbox", type=Path, required=True)
    p_split.add_argument("--out", type=Path, required=True)
    p_labels = commands.add_parser("labels")
    p_labels.add_argument("--root", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "send":
        send(args.port, args.case, args.recipients, args.sender)
    elif args.command == "message":
        sys.stdout.buffer.write(test_message(args.case, args.recipients, args.sender).as_bytes())
    elif args.command == "wait":
        wait(args.mbox, args.cases, args.timeout)
    elif args.command == "split":
        split(args.mbox, args.out)
    else:
        write_labels(args.root)


if __name__ == "__main__":
    main()
