"""The reply reader (mailctl/delivery/smtp_reader.py) on replies from strangers: every reply
asked for comes back in order however the bytes are split, nothing unasked-for is paired with
a command, and bad input ends the session with a bounded amount of buffering.

The reader runs on a real TCP connection to a raw loopback socket that writes the test's
bytes, split as the test says."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence

import pytest
from aiosmtplib.errors import SMTPResponseException, SMTPServerDisconnected

from mailctl.delivery.smtp_reader import INVALID_REPLY, MAX_LINE, ReplyReader

THREE = b"250 2.1.0 Ok\r\n250-2.1.5 Ok\r\n250 2.1.5 second line\r\n354 End data with <CR><LF>.<CR><LF>\r\n"


class Wire:
    """A loopback TCP connection: `reader` reads on one end, the test writes the other."""

    def __init__(self, reader: ReplyReader, server: socket.socket) -> None:
        self.reader = reader
        self.server = server

    async def send(self, chunks: Sequence[bytes]) -> None:
        for chunk in chunks:
            self.server.sendall(chunk)
            await asyncio.sleep(0.002)  # each chunk its own segment, as a slow link sends it


@contextlib.asynccontextmanager
async def wire() -> AsyncIterator[Wire]:
    listener = socket.create_server(("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    accepted = loop.run_in_executor(None, listener.accept)
    transport, _ = await loop.create_connection(
        asyncio.Protocol, "127.0.0.1", listener.getsockname()[1]
    )
    server, _ = await accepted
    server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        yield Wire(ReplyReader.take_over(transport), server)
    finally:
        transport.close()
        server.close()
        listener.close()


async def replies(reader: ReplyReader, count: int) -> list[tuple[int, str]]:
    out = []
    for _ in range(count):
        reply = await asyncio.wait_for(reader.reply(), 5)
        out.append((reply.code, reply.message))
    return out


EXPECTED = [
    (250, "2.1.0 Ok"),
    (250, "2.1.5 Ok\n2.1.5 second line"),
    (354, "End data with <CR><LF>.<CR><LF>"),
]


@pytest.mark.parametrize("split", ["whole", "bytes", "lines", "mid-crlf"])
def test_pipelined_replies_come_back_in_order_however_they_are_split(split: str) -> None:
    chunks = {
        "whole": [THREE],
        "bytes": [THREE[i : i + 1] for i in range(len(THREE))],
        "lines": [line + b"\n" for line in THREE.split(b"\n")[:-1]],
        "mid-crlf": [part + b"\r" for part in THREE.split(b"\r")[:-1]] + [b"\n"],
    }[split]

    async def main() -> list[tuple[int, str]]:
        async with wire() as w:
            w.reader.write(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n", 3)
            await w.send(chunks)
            return await replies(w.reader, 3)

    assert asyncio.run(main()) == EXPECTED


def test_replies_nobody_asked_for_are_dropped_never_paired_with_a_later_command() -> None:
    async def main() -> list[tuple[int, str]]:
        async with wire() as w:
            await w.send([b"421 4.4.2 idle too long\r\n"])  # out of turn: no command yet
            w.reader.write(b"NOOP\r\n", 1)
            # the one reply asked for, then one more out of turn in the same segment
            await w.send([b"250 2.0.0 Ok\r\n250 2.0.0 unasked\r\n"])
            first = await replies(w.reader, 1)
            w.reader.write(b"RSET\r\n", 1)
            await w.send([b"250 2.0.0 reset\r\n"])
            return first + await replies(w.reader, 1)

    assert asyncio.run(main()) == [(250, "2.0.0 Ok"), (250, "2.0.0 reset")]


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"25O 2.0.0 Ok\r\n", "Malformed SMTP response line: 25O 2.0.0 Ok"),
        (b"HTTP/1.1 400 Bad Request\r\n", "Malformed SMTP response line: HTTP/1.1 400 Bad Request"),
        (b"250 " + b"x" * MAX_LINE + b"\r\n", "Response too long"),
        (b"250-" + b"x" * 100 + b"\r\n", "Response too long"),  # endless continuation lines
        (b"x" * (MAX_LINE + 10), "Response too long"),  # a line that never ends
    ],
    ids=["letter-in-code", "not-smtp", "long-line", "endless-reply", "no-line-end"],
)
def test_a_reply_that_cannot_be_read_ends_the_session(data: bytes, what: str) -> None:
    async def main() -> SMTPResponseException:
        async with wire() as w:
            w.reader.write(b"MAIL FROM:<a@example.com>\r\n", 1)
            await w.send([data] * (400 if data.startswith(b"250-") else 1))
            with pytest.raises(SMTPResponseException) as caught:
                await replies(w.reader, 1)
            with pytest.raises(SMTPResponseException):  # and stays ended
                w.reader.write(b"RSET\r\n", 1)
            return caught.value

    error = asyncio.run(main())
    assert (error.code, error.message) == (INVALID_REPLY, what)


def test_replies_read_before_a_hang_up_are_still_handed_out_then_the_loss() -> None:
    async def main() -> tuple[list[tuple[int, str]], type[BaseException]]:
        async with wire() as w:
            w.reader.write(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n", 3)
            await w.send([b"250 2.1.0 Ok\r\n421 4.7.0 closing\r\n"])
            w.server.close()
            read = await replies(w.reader, 2)
            with pytest.raises(SMTPServerDisconnected) as caught:
                await replies(w.reader, 1)
            return read, caught.type

    read, error = asyncio.run(main())
    assert read == [(250, "2.1.0 Ok"), (421, "4.7.0 closing")]
    assert error is SMTPServerDisconnected


def test_a_reply_that_does_not_come_in_time_fails_and_each_reply_gets_the_whole_timeout() -> None:
    # Only waiting counts: replies that arrived together are handed out without a timer,
    # and replies coming one after another each get the whole timeout.
    async def main() -> tuple[list[tuple[int, str]], list[int], float]:
        async with wire() as w:
            w.reader.timeout = 0.3
            loop = asyncio.get_running_loop()
            w.reader.write(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n", 3)
            await asyncio.sleep(0.4)  # longer than the timeout, before anyone waits
            await w.send([THREE])
            together = await replies(w.reader, 3)
            w.reader.write(b"RSET\r\nNOOP\r\n", 2)
            loop.call_later(0.2, w.server.sendall, b"250 2.0.0 reset\r\n")
            loop.call_later(0.4, w.server.sendall, b"250 2.0.0 ok\r\n")
            apart = [(await w.reader.reply()).code, (await w.reader.reply()).code]
            w.reader.write(b"NOOP\r\n", 1)
            started = loop.time()
            with pytest.raises(TimeoutError, match="no reply within 0.3 s"):
                await asyncio.wait_for(w.reader.reply(), 3)  # a hang fails, not waits
            return together, apart, loop.time() - started

    together, apart, waited = asyncio.run(main())
    assert together == EXPECTED
    assert apart == [250, 250]
    assert 0.29 <= waited < 2.0
