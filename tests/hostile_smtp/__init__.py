"""A hostile SMTP server for tests: one misbehaviour per test, on 127.0.0.1.

``HostileServer(Script(...))`` runs a small asyncio server in its own thread. The script
says what the server does wrong: no banner, an endless or huge banner, a raw reply of the
test's choosing at any stage (garbage, a 10 MB line, a 2xx where none belongs), a drop in
the middle of the message data, a late answer to the final dot. The server counts what it
actually received (``messages``: complete messages it answered with a 2xx) so a test can
tell "sent" from delivered. It imports nothing of mailctl.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

CRLF = b"\r\n"

DEFAULT_REPLIES: Mapping[str, bytes] = {
    "EHLO": b"250-hostile.test\r\n250 8BITMIME\r\n",
    "HELO": b"250 hostile.test\r\n",
    "MAIL": b"250 2.1.0 Ok\r\n",
    "RCPT": b"250 2.1.5 Ok\r\n",
    "DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    "DOT": b"250 2.0.0 Ok: queued\r\n",
    "RSET": b"250 2.0.0 Ok\r\n",
    "NOOP": b"250 2.0.0 Ok\r\n",
    "QUIT": b"221 2.0.0 Bye\r\n",
}


@dataclass(frozen=True)
class Script:
    """What the server does; every field left alone behaves like a plain, honest server.

    ``replies`` maps a verb (EHLO, MAIL, RCPT, DATA, DOT for the end of data, RSET, QUIT)
    to the raw bytes sent back, so a reply may be anything at all.
    """

    banner: bytes | None = b"220 hostile.test ESMTP\r\n"  # None: never say a word
    endless_banner: bool = False  # "220-" continuation lines for ever
    replies: Mapping[str, bytes] = field(default_factory=dict)
    dot_delay: float = 0.0  # seconds before answering the final dot
    drop_after_data_bytes: int | None = None  # hang up after this much message data
    max_line: int | None = None  # answer the dot "500 Line too long" past this many octets
    pipelining: bool = False  # offer PIPELINING (RFC 2920) in the EHLO reply
    dribble: bool = False  # send every reply one byte per write, as a slow link might


class HostileServer:
    """The server and its thread; ``start()`` returns once it listens, ``stop()`` ends all."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.port = 0
        self.commands: list[str] = []  # verbs received, in order, every session
        self.messages: list[bytes] = []  # complete messages answered with a 2xx
        self.dots = 0  # ends of data received, whatever was answered
        self.errors: list[str] = []  # the server's own failures (a test should see none)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    def start(self) -> HostileServer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        future.result(timeout=10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0, limit=1 << 20)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._sessions):
                task.cancel()
            if self._sessions:
                await asyncio.wait(self._sessions, timeout=5)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except Exception as exc:  # noqa: BLE001 - reported to the test, never swallowed
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            self._sessions.discard(task)
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script = self.script
        replies = {**DEFAULT_REPLIES, **script.replies}
        if script.pipelining and "EHLO" not in script.replies:
            replies["EHLO"] = b"250-hostile.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        if script.endless_banner:
            while True:
                writer.write(b"220-hostile.test still greeting you\r\n")
                await writer.drain()
        if script.banner is None:
            await reader.read()  # silent until the client gives up
            return
        writer.write(script.banner)
        await writer.drain()
        while True:
            line = await reader.readline()
            if not line:
                return
            verb = line.split(b" ", 1)[0].strip().upper().decode("ascii", "replace")
            self.commands.append(verb)
            await self._reply(
                writer, replies.get(verb, b"502 5.5.2 Error: command not recognized\r\n")
            )
            if verb == "QUIT":
                return
            if verb == "DATA" and replies["DATA"].startswith(b"354"):
                if not await self._data(reader, writer, replies["DOT"]):
                    return

    async def _data(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: bytes
    ) -> bool:
        """The message up to its final dot, then the scripted answer; False: hung up."""
        script = self.script
        lines: list[bytes] = []
        received = 0
        while True:
            line = await reader.readuntil(b"\n")
            received += len(line)
            if script.drop_after_data_bytes is not None and received > script.drop_after_data_bytes:
                return False
            if line == b".\r\n":
                break
            lines.append(line[1:] if line.startswith(b"..") else line)
        self.dots += 1
        if script.max_line is not None and any(len(x) - 2 > script.max_line for x in lines):
            answer = b"500 5.5.2 Line too long\r\n"
        if script.dot_delay:
            await asyncio.sleep(script.dot_delay)
        if answer[:1] == b"2":
            self.messages.append(b"".join(lines))
        with contextlib.suppress(ConnectionError):
            await self._reply(writer, answer)
        return True

    async def _reply(self, writer: asyncio.StreamWriter, reply: bytes) -> None:
        if not self.script.dribble:
            writer.write(reply)
            await writer.drain()
            return
        for index in range(len(reply)):
            writer.write(reply[index : index + 1])
            await writer.drain()
            await asyncio.sleep(0)
