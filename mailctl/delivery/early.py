"""A run's first relay connection, opened while its campaign loads.

Before a run sends, it migrates the database, imports the campaign's CSV and queues its
recipients: tens of milliseconds for a small list, a second or more for a large one. Opening
the relay connection takes as long again over a real network (TCP, then the greeting, EHLO,
STARTTLS and AUTH). `EarlyConnection` starts the TCP connection in a thread just before the
import, and the dispatcher's first connection to that relay adopts the socket: it reads the
greeting from it and goes on as with any other connection (transport.Connection.open), with
the same lane accounting.

A connection opened for nothing spends the receiver's connection-rate budget, so a run
connects early only when it is certain to use the connection at once (`connect_early`): a
relay profile with one sending IP outside warm-up, a campaign that is new or has messages due
now, no lane of that IP held back, and a CSV small enough to load in well under a second.
A socket nobody took is closed the polite way (greeting read, QUIT) when the run ends, and one
that waited longer than `EARLY_HOLD` is closed so rather than trusted.

Imports the standard library, the config, the store and the reputation lanes; no CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass

from mailctl.config.campaign import Campaign
from mailctl.config.profiles import Profile, TlsMode, TransportKind
from mailctl.delivery.transport import Destination, source_address
from mailctl.replies.rules import load_rules
from mailctl.reputation.lane_state import LaneState
from mailctl.reputation.scheduler import Scheduler
from mailctl.store.base import Store

# Seconds an early socket may wait for the dispatcher. Well under the receivers' own
# timeouts for a client that has not yet said EHLO (Postfix under stress: 10 s; RFC 5321's
# 5 minutes otherwise); an older one is closed politely and a fresh connection opened.
EARLY_HOLD = 8.0
# A CSV larger than this loads for longer than the connection would save: no early connect.
EARLY_MAX_CSV = 1 << 20
# Seconds a polite close waits for the greeting and the reply to QUIT.
QUIT_WAIT = 2.0
# A greeting's last line: three digits and a space (or the end of the line).
_LAST_LINE = re.compile(rb"(?:^|\n)\d{3}(?: [^\n]*)?\r?\n")


@dataclass(frozen=True)
class Target:
    """Where an early connection goes: what the dispatcher's destination must match. Not a
    `Destination` (`relay_destination`): that reads the AUTH password from the environment,
    which stays the dispatcher's to ask for, and to report missing, when it connects."""

    host: str
    port: int
    source_ip: str | None
    timeout: float
    implicit_tls: bool

    def serves(self, destination: Destination) -> bool:
        return (destination.host, destination.port, destination.source_ip) == (
            self.host,
            self.port,
            self.source_ip,
        )


def connect_early(
    store: Store,
    campaign: Campaign,
    profile: Profile,
    pool: str,
    now: float,
    clock: Callable[[], float] = time.time,
) -> EarlyConnection | None:
    """An early connection to the campaign's relay, or None unless the run is certain to
    want one at once (see the module's docstring for why each condition)."""
    if profile.transport is not TransportKind.RELAY or profile.host is None:
        return None
    ips = profile.pools.get(pool, ())
    if len(ips) != 1 or ips[0].warmup is not None:
        return None  # the router picks among several IPs; a cold IP's cap may hold it back
    ip = ips[0].ip
    if campaign.csv is not None:
        try:
            if campaign.csv.path.stat().st_size > EARLY_MAX_CSV:
                return None
        except OSError:
            return None  # the import reports it
    row = store.get_campaign(campaign.name)
    if row is not None:
        due = store.next_due_at([row["id"]])
        if row["status"] != "active" or due is None or due > now:
            return None
    states = [LaneState.from_row(r) for r in store.lane_rows() if r["ip"] == ip]
    scheduler = Scheduler(load_rules(profile.rules), states=states)
    for state in states:
        lane = scheduler.lane(state.ip, state.provider)
        if lane.ready_in(now) > 0 or lane.connect_wait(now) > 0:
            return None  # paused, pacing or probing: the run would not connect at once
    assert profile.port is not None
    return EarlyConnection(
        Target(
            host=profile.host,
            port=profile.port,
            source_ip=ip,
            timeout=profile.timeout,
            implicit_tls=profile.tls is TlsMode.IMPLICIT,
        ),
        clock,
    )


class EarlyConnection:
    """A TCP connection to a relay, opened in a thread while the run still loads."""

    def __init__(self, target: Target, clock: Callable[[], float] = time.time) -> None:
        self.target = target
        self.began = clock()  # on the run's clock: a lane may count its window from here
        self._socket: Future[tuple[socket.socket, float]] = Future()
        self._lock = threading.Lock()
        self._done = False  # taken or discarded: the socket is no longer this object's
        threading.Thread(target=self._connect, name="mailctl-early-connect", daemon=True).start()

    def _connect(self) -> None:
        t = self.target
        try:
            sock = socket.create_connection(
                (t.host, t.port), timeout=t.timeout, source_address=source_address(t.source_ip)
            )
        except OSError as exc:
            with contextlib.suppress(InvalidStateError):  # cancelled: nobody waits
                self._socket.set_exception(exc)
            return
        with self._lock:
            if not self._done:
                try:
                    self._socket.set_result((sock, time.monotonic()))
                    return
                except InvalidStateError:
                    pass  # `take` was cancelled (the run stopped) while this connected
        self._quit(sock)  # discarded while it connected

    async def take(self) -> socket.socket | None:
        """The connected socket, for the dispatcher's first connection to the target; None
        when the connect failed (the caller connects the usual way and meets the failure
        there) or the socket waited too long."""
        try:
            sock, connected_at = await asyncio.wrap_future(self._socket)
        except OSError:
            return None
        with self._lock:
            if self._done:
                return None
            self._done = True
        if time.monotonic() - connected_at > EARLY_HOLD:
            await asyncio.to_thread(self._quit, sock)
            return None
        return sock

    def discard(self) -> None:
        """The run is over: a socket nobody took is closed politely (now, or by the thread
        when it connects)."""
        with self._lock:
            if self._done:
                return
            self._done = True
            pending = not self._socket.done() or self._socket.cancelled()
            if pending or self._socket.exception() is not None:
                return  # the thread closes what it connects from now on
        self._quit(self._socket.result()[0])

    def _quit(self, sock: socket.socket) -> None:
        """Close an unused connection as a well-behaved client does: after the greeting (a
        client that talks first looks like a spam bot), with QUIT."""
        with sock, contextlib.suppress(OSError):
            if self.target.implicit_tls:
                return  # no TLS handshake was made: there is no session to QUIT
            sock.settimeout(QUIT_WAIT)
            greeting = b""
            while not _LAST_LINE.search(greeting) and len(greeting) < 4096:
                chunk = sock.recv(1024)
                if not chunk:
                    return
                greeting += chunk
            sock.sendall(b"QUIT\r\n")
            sock.recv(1024)
