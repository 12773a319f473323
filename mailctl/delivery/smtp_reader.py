"""The SMTP session's reply reader once a connection is open: replies in order, pipelined.

aiosmtplib opens the session (greeting, EHLO, STARTTLS, AUTH). Its protocol then pairs one
reply with one command and drops whatever arrives while a parsed reply waits to be picked
up, so a server that answers several pipelined commands (RFC 2920) at once would lose
replies. `Connection` therefore hands the open transport to a `ReplyReader`
(``transport.set_protocol``): it keeps every reply it was asked for, in order, and the
connection can write MAIL, RCPT and DATA in one go and read their three replies after.

Replies come from strangers: lines are bounded (8 KiB, as aiosmtplib), a reply is bounded
(32 KiB), a malformed line fails the session, each byte is scanned once, and no reply is
waited for longer than the reader's timeout. Replies that arrive when none was asked for (a
server that talks out of turn) are dropped, as aiosmtplib drops them, so they can never be
paired with the next command.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

from aiosmtplib.errors import SMTPException, SMTPResponseException, SMTPServerDisconnected
from aiosmtplib.response import SMTPResponse

MAX_LINE = 8192  # one reply line, as aiosmtplib's MAX_LINE_LENGTH
MAX_REPLY = 4 * MAX_LINE  # one reply with its continuation lines
INVALID_REPLY = -1  # aiosmtplib's code for a reply that could not be read
NO_TIMEOUT = 3600.0  # a session with no timeout configured still never waits longer


class ReplyReader(asyncio.Protocol):
    """Reads the replies to the commands written through it, in the order they were written."""

    def __init__(self, transport: asyncio.Transport, timeout: float = NO_TIMEOUT) -> None:
        self.transport = transport
        self.timeout = timeout  # seconds each reply may take once it is waited for
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer already searched for a line end
        self._lines: list[bytes] = []  # the texts of the reply being read
        self._size = 0  # its bytes so far
        self._replies: deque[SMTPResponse] = deque()
        self._expected = 0  # replies asked for and not read off the wire yet
        self._failure: SMTPException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @classmethod
    def take_over(
        cls, transport: asyncio.BaseTransport, timeout: float = NO_TIMEOUT
    ) -> ReplyReader:
        """Make this reader the protocol of an open TCP or TLS transport from now on."""
        reader = cls(cast(asyncio.Transport, transport), timeout)
        transport.set_protocol(reader)
        return reader

    @property
    def usable(self) -> bool:
        """Neither side has ended the session."""
        return self._failure is None and not self.transport.is_closing()

    def write(self, data: bytes, replies: int) -> None:
        """Send `data`, which asks for `replies` replies."""
        if self._failure is not None:
            raise self._failure
        if self.transport.is_closing():
            raise SMTPServerDisconnected("Connection lost")
        self._expected += replies
        self.transport.write(data)

    async def reply(self) -> SMTPResponse:
        """The next reply asked for. Raises SMTPServerDisconnected when the connection ends
        first, SMTPResponseException (code -1) when the server sent something unreadable,
        TimeoutError when it has not come `timeout` seconds after it was first waited for.

        A timer runs only while the reply is actually awaited: the pipelined replies that
        arrive together are handed out without one."""
        if self._replies:
            return self._replies.popleft()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while not self._replies:
            if self._failure is not None:
                raise self._failure
            waiter = self._waiter = loop.create_future()
            timer = loop.call_at(deadline, _time_out, waiter, self.timeout)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        return self._replies.popleft()

    # --- asyncio.Protocol -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._failure is not None or not self._expected:
            return  # nothing asked for: never pair it with a later command
        buffer = self._buffer
        buffer += data
        start = 0
        while self._expected:
            end = buffer.find(b"\n", max(start, self._scanned))
            if end < 0:
                break
            line = bytes(buffer[start : end + 1])
            start = end + 1
            if not self._line(line):
                return
        if not self._expected:
            buffer.clear()  # what follows the last reply asked for was not asked for
        else:
            del buffer[:start]
            if len(buffer) > MAX_LINE:
                self._fail(SMTPResponseException(INVALID_REPLY, "Response too long"))
                return
        self._scanned = len(buffer)
        self._wake()

    def _line(self, line: bytes) -> bool:
        """Take one reply line; False when it broke the session."""
        if len(line) > MAX_LINE or self._size + len(line) > MAX_REPLY:
            self._fail(SMTPResponseException(INVALID_REPLY, "Response too long"))
            return False
        code = line[:3]
        if not code.isdigit() or not code.isascii():
            text = line[:80].decode("utf-8", "replace").strip()
            self._fail(
                SMTPResponseException(INVALID_REPLY, f"Malformed SMTP response line: {text}")
            )
            return False
        self._size += len(line)
        self._lines.append(line[4:].strip(b" \t\r\n"))
        if line[3:4] != b"-":
            text = b"\n".join(self._lines).decode("utf-8", "surrogateescape")
            self._replies.append(SMTPResponse(int(code), text))
            self._lines = []
            self._size = 0
            self._expected -= 1
        return True

    def eof_received(self) -> bool:
        self._fail(SMTPServerDisconnected("Unexpected EOF received"))
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._failure is None:
            lost = SMTPServerDisconnected("Connection lost")
            lost.__cause__ = exc
            self._fail(lost)

    def _fail(self, exc: SMTPException) -> None:
        """The session is over: replies already read are still handed out, then `exc`."""
        if self._failure is None:
            self._failure = exc
        self._buffer.clear()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _time_out(waiter: asyncio.Future[None], seconds: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"no reply within {seconds:g} s"))
