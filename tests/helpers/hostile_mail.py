"""Hostile bounce mailbox content: inputs built to make a backtracking regex or a
per-recipient loop go quadratic, shared by tests/test_bounce_hostile.py and
bench/bounce_hostile_bench.py.

Standard library only.
"""

from __future__ import annotations

HEAD = (
    "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\n"
    "To: news@example.com\nSubject: Undelivered Mail Returned to Sender\n"
    "Date: Mon, 30 Nov 2026 07:00:00 +0000\n"
)


def _text_bounce(body: str) -> bytes:
    return (HEAD + "Content-Type: text/plain\n\n" + body + "\n").encode()


def _dsn(text: str, fields: str) -> bytes:
    return (
        HEAD + "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\n" + text + "\n"
        "--b\nContent-Type: message/delivery-status\n\n" + fields + "\n--b--\n"
    ).encode()


def hostile_inputs() -> list[tuple[str, bytes]]:
    """(name, raw message) pairs: long runs, many addresses, 1 MB parts, deep nesting."""
    addresses = " ".join(f"user{i}@example{i % 7}.org" for i in range(2000))
    long_runs = {
        "10,000 dashes": "-" * 10_000,
        "100,000 dashes": "-" * 100_000,
        "100,000 '='": "=" * 100_000,
        "100,000 spaces then x": " " * 100_000 + "x",
        "100,000 'a'": "a" * 100_000,
        "100,000 dots": "." * 100_000,
        "100,000 '@'": "@" * 100_000,
        "100,000 '<'": "<" * 100_000,
        "100,000 '>'": ">" * 100_000,
        "100,000 digits": "5" * 100_000,
        "50,000 'a.'": "a." * 50_000,
        "50,000 'a@'": "a@" * 50_000,
        "50,000 '- '": "- " * 50_000,
        "30,000 '550 '": "550 " * 30_000,
        "20,000 '5.1.1 '": "5.1.1 " * 20_000,
        "20,000 'said: '": "said: " * 20_000,
        "20,000 '<<< '": "<<< " * 20_000,
        "50,000 'x-'": "x-" * 50_000,
        "20,000 'a.b@c'": "a.b@c" * 20_000,
        "50,000 newlines": "\n" * 50_000,
        "50,000 '>\\n'": ">\n" * 50_000,
        "20,000 'x: y\\n'": "x: y\n" * 20_000,
    }
    inputs = [
        (name, _text_bounce("This message could not be delivered.\n" + run))
        for name, run in long_runs.items()
    ]
    inputs += [
        ("2,000 addresses on one line", _text_bounce("Delivery has failed to:\n" + addresses)),
        (
            "2,000 addresses, one a line",
            _text_bounce("Delivery has failed to:\n" + addresses.replace(" ", "\n")),
        ),
        (
            "2,000 '<addr>: 550 5.1.1' lines",
            _text_bounce(
                "".join(f"<user{i}@example.org>: 550 5.1.1 unknown user\n" for i in range(2000))
            ),
        ),
        (
            "1 MB text part",
            _text_bounce("could not be delivered to u@example.org\n" + ("x" * 79 + "\n") * 13_000),
        ),
        ("1 MB one-line part", _text_bounce("undeliverable u@example.org " + "y" * 1_000_000)),
        (
            "1 MB DSN field",
            _dsn(
                "failed",
                "Reporting-MTA: dns; mx\n\nFinal-Recipient: rfc822; u@example.org\n"
                "Action: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; 550 " + "z" * 1_000_000,
            ),
        ),
        (
            "2,000 DSN recipient blocks",
            _dsn(
                "failed",
                "Reporting-MTA: dns; mx\n\n"
                + "".join(
                    f"Final-Recipient: rfc822; u{i}@example.org\nAction: failed\nStatus: 5.1.1\n\n"
                    for i in range(2000)
                ),
            ),
        ),
        (
            "2,000-deep multipart",
            (
                HEAD
                + 'Content-Type: multipart/mixed; boundary="b0"\n\n'
                + "".join(
                    f'--b{i}\nContent-Type: multipart/mixed; boundary="b{i + 1}"\n\n'
                    for i in range(2000)
                )
                + "bounce u@example.org\n"
            ).encode(),
        ),
        ("200 KB html", (HEAD + "Content-Type: text/html\n\n" + "<b" * 100_000 + "\n").encode()),
        (
            "header 1 MB subject",
            (HEAD.replace("Subject: ", "Subject: " + "returned " * 110_000) + "\n\nx\n").encode(),
        ),
    ]
    return inputs


def hostile_replies() -> list[tuple[str, str]]:
    return [
        ("reply: 100,000 dashes", "550 " + "-" * 100_000),
        ("reply: 30,000 '550 '", "550 " * 30_000),
        ("reply: 20,000 '5.1.1 '", "5.1.1 " * 20_000),
        ("reply: 100,000 'a'", "550 5.1.1 " + "a" * 100_000),
        ("reply: 50,000 'a@'", "550 " + "a@" * 50_000),
        ("reply: 100,000 spaces", "550" + " " * 100_000 + "x"),
        ("reply: 50,000 'a.'", "550 " + "a." * 50_000),
        ("reply: 'rcpt to:<x>' then 15,000 spaces", "550 rcpt to:<x>" + " " * 15_000 + "x"),
        ("reply: '>>> data' then 15,000 newlines", "550 >>> data" + "\n" * 15_000 + "x"),
        ("reply: 'smtp command' then 15,000 newlines", "550 smtp command" + "\n" * 15_000),
        ("reply: 15,000 dashes then 'smtp command'", "550 " + "-" * 15_000 + "smtp command"),
        ("reply: 3,000 '550 x' then a line", "550 x " * 3_000 + "\n[rcpt to]"),
    ]
