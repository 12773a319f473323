"""Running simulated providers: in the caller's loop, in a thread, or until interrupted.

Two runners share one implementation: :class:`SimServer` runs inside the caller's asyncio loop,
:class:`ThreadedSimServer` runs a :class:`SimServer` on a private loop in a thread (sync tests,
subprocess tests). :func:`run_forever` serves until interrupted, for the CLI. Also owns the
throwaway certificate for STARTTLS.

Must not import mailctl's cli, delivery, bounces or report.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from mailctl.errors import MailctlError, SimError
from mailctl.sim.behaviours import SimBehaviour, SimConfig, SimTls
from mailctl.sim.events import (
    Bounce,
    Delivery,
    EventCallback,
    IpStats,
    Refusal,
    SimEventKind,
    TimeSource,
)
from mailctl.sim.handler import SimHandler, SimSMTP

# --------------------------------------------------------------------------------------------
# TLS


def _self_signed_pem() -> tuple[bytes, bytes]:
    """A throwaway certificate for 127.0.0.1/localhost and its key, as PEM bytes."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError as error:  # pragma: no cover - cryptography is installed here
        raise SimError("STARTTLS in the sim needs the 'cryptography' package") from error
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())  # EC: generated in milliseconds
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailctl-sim")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The server's TLS context, made once per process. `load_cert_chain` reads only files,
    so the certificate and key go to a private temporary directory that is removed as soon as
    they are loaded: nothing (least of all a private key) is left behind, even after kill -9
    of a long-running `mailctl sim`."""
    cert_pem, key_pem = _self_signed_pem()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory(prefix="mailctl-sim-tls-") as directory:
        cert_path, key_path = Path(directory) / "cert.pem", Path(directory) / "key.pem"
        cert_path.write_bytes(cert_pem)
        fd = os.open(key_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_pem)
        context.load_cert_chain(cert_path, key_path)
    return context


# --------------------------------------------------------------------------------------------
# Runners


class SimServer:
    """A simulated provider served by the running asyncio loop.

    >>> server = await SimServer(SimConfig(preset("google"))).start()
    >>> server.port
    >>> await server.close()
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        clock: TimeSource = time.time,
        on_event: EventCallback | None = None,
    ):
        self.config = config or SimConfig()
        self._provider = SimHandler(self.config, clock, on_event)
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self.started = False  # set once listening; stays set after close

    @property
    def behaviour(self) -> SimBehaviour:
        return self.config.behaviour

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def port(self) -> int:
        if self._port is None:
            raise SimError("the simulated provider is not running")
        return self._port

    @property
    def deliveries(self) -> list[Delivery]:
        """Accepted recipients so far (a copy)."""
        return list(self._provider.deliveries)

    @property
    def refusals(self) -> list[Refusal]:
        """Refused or dropped recipients and connections so far (a copy)."""
        return list(self._provider.refusals)

    @property
    def bounces(self) -> list[Bounce]:
        """DSNs written so far (a copy)."""
        return list(self._provider.bounces)

    @property
    def errors(self) -> list[str]:
        """Failures inside the sim itself; a healthy run has none."""
        return list(self._provider.errors)

    @property
    def connection_count(self) -> int:
        """Connections accepted since start (including refused ones)."""
        return self._provider.connection_count

    def stats(self) -> dict[str, IpStats]:
        """Per sending IP: inbox, spam, throttled, blocked, bounced, other refusals, and the
        reputation where the behaviour keeps one."""
        return self._provider.stats()

    @property
    def open_connections(self) -> int:
        return len(self._provider.protocols)

    async def start(self) -> Self:
        if self._server is not None:
            raise SimError("the simulated provider is already running")
        config = self.config
        loop = asyncio.get_running_loop()
        tls_context = _tls_context() if config.tls is not SimTls.OFF else None
        provider = self._provider

        def factory() -> SimSMTP:
            return SimSMTP(
                provider,
                hostname=config.behaviour.hostname,  # avoids a getfqdn() DNS lookup per connection
                ident=config.behaviour.banner,
                data_size_limit=config.data_size_limit,
                enable_SMTPUTF8=True,
                tls_context=tls_context,
                require_starttls=config.tls is SimTls.REQUIRE,
                timeout=config.idle_timeout,
                loop=loop,
            )

        provider.open_files()
        try:
            self._server = await loop.create_server(
                factory, host=config.host, port=config.port, reuse_address=True
            )
        except OSError as error:
            provider.close_files()
            raise SimError(f"cannot listen on {config.host}:{config.port}: {error}") from error
        self._port = self._server.sockets[0].getsockname()[1]
        self.started = True
        provider.emit(
            SimEventKind.LISTENING,
            f"{config.behaviour.name} simulator listening on {config.host}:{self._port}",
        )
        return self

    async def close(self) -> None:
        """Stop listening, cut every open connection and wait for their handlers to end."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        provider = self._provider
        tasks = []
        for protocol in list(provider.protocols):
            task = protocol._handler_coroutine
            if task is not None and not task.done():
                tasks.append(task)
            protocol.abort_connection()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        await server.wait_closed()
        provider.close_files()
        provider.emit(SimEventKind.STOPPED, f"{self.behaviour.name} simulator stopped")

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def start(
    config: SimConfig | None = None,
    *,
    clock: TimeSource = time.time,
    on_event: EventCallback | None = None,
) -> SimServer:
    """Start a simulated provider in the running loop; ``await server.close()`` stops it."""
    return await SimServer(config, clock=clock, on_event=on_event).start()


class ThreadedSimServer:
    """A :class:`SimServer` on its own event loop in a daemon thread, for sync code.

    Usable as a context manager; ``start()`` returns the port.
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        clock: TimeSource = time.time,
        on_event: EventCallback | None = None,
        stop_timeout: float = 10.0,
    ):
        self.sim = SimServer(config, clock=clock, on_event=on_event)
        self.stop_timeout = stop_timeout
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    # Delegation keeps one place for the records and their thread-safe copies.
    @property
    def config(self) -> SimConfig:
        return self.sim.config

    @property
    def behaviour(self) -> SimBehaviour:
        return self.sim.behaviour

    @property
    def host(self) -> str:
        return self.sim.host

    @property
    def port(self) -> int:
        return self.sim.port

    @property
    def deliveries(self) -> list[Delivery]:
        return self.sim.deliveries

    @property
    def refusals(self) -> list[Refusal]:
        return self.sim.refusals

    @property
    def bounces(self) -> list[Bounce]:
        return self.sim.bounces

    @property
    def errors(self) -> list[str]:
        return self.sim.errors

    @property
    def connection_count(self) -> int:
        return self.sim.connection_count

    @property
    def open_connections(self) -> int:
        return self.sim.open_connections

    def stats(self) -> dict[str, IpStats]:
        return self.sim.stats()

    def start(self, timeout: float = 10.0) -> int:
        if self._thread is not None:
            raise SimError("the simulated provider is already running")
        self._ready.clear()
        self._failure = None
        self._thread = threading.Thread(
            target=self._run, name=f"mailctl-sim-{self.behaviour.name}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise SimError("the simulated provider did not start in time")
        if self._failure is not None:
            self._thread.join(timeout)
            self._thread = None
            if isinstance(self._failure, MailctlError):
                raise self._failure
            raise SimError(f"the simulated provider failed to start: {self._failure!r}")
        return self.port

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        try:
            await self.sim.start()
        except BaseException as error:  # handed to start() in the caller's thread
            self._failure = error
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop_requested.wait()
        finally:
            await self.sim.close()

    def stop(self) -> None:
        """Stop serving; connected clients see their connection closed. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stop_requested = self._loop, self._stop_requested
        if loop is not None and stop_requested is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop_requested.set)
        thread.join(self.stop_timeout)
        if thread.is_alive():
            raise SimError("the simulated provider did not stop in time")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_forever(
    config: SimConfig,
    *,
    on_event: EventCallback | None = None,
    clock: TimeSource = time.time,
    stop: threading.Event | None = None,
    on_stop: Callable[[dict[str, IpStats]], None] | None = None,
) -> None:
    """Serve until ``stop`` is set or the process is interrupted (KeyboardInterrupt propagates).

    For ``mailctl sim``: the LISTENING event carries the actual port; ``on_stop`` receives the
    counts per sending IP once the server has stopped (also on Ctrl-C).
    """
    server = SimServer(config, clock=clock, on_event=on_event)

    async def serve() -> None:
        async with server:
            if stop is None:
                await asyncio.Event().wait()
            else:
                # Polled rather than awaited in a worker thread, so Ctrl-C never waits on it.
                while not stop.is_set():
                    await asyncio.sleep(0.1)

    try:
        asyncio.run(serve())
    finally:
        if on_stop is not None and server.started:
            on_stop(server.stats())
