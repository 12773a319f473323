"""Real receivers no one here wrote: a private Postfix smtpd and a postgrey policy server.

``postfix_receiver(**limits)`` runs its own Postfix instance (``postfix -c DIR``, own queue and
data directories in a throwaway directory, never the system's) listening on a free
127.0.0.1 port, delivering everything to the ``discard`` transport. ``limits`` are main.cf
settings such as ``smtpd_client_connection_rate_limit=2``; anvil's time unit defaults to a
few seconds, and anvil's exemptions are emptied (they default to $mynetworks, which holds
127.0.0.1). ``policy_port`` puts a policy server (postgrey) behind ``check_policy_service``.
``postgrey_server(delay=...)`` runs postgrey on a free loopback port with its own db directory.
Both stop what they started (by pid file), also when the test fails. The Postfix log
(``Receiver.log``) tells connections, refusals and deliveries apart.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTGREY = shutil.which("postgrey") or "/usr/sbin/postgrey"


def have_postfix() -> bool:
    return os.path.exists(POSTFIX) and os.path.isdir("/usr/lib/postfix/sbin")


def have_postgrey() -> bool:
    return os.path.exists(POSTGREY)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, timeout: float = 15.0) -> None:
    """Until something listens on the port. Never connects: a probe would count against the
    receiver's connection limits."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return  # taken: the server listens
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class Receiver:
    port: int
    directory: Path

    @property
    def log(self) -> str:
        path = self.directory / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log))

    def settled_count(self, pattern: str, expected: int, timeout: float = 5.0) -> int:
        """`count`, once it reaches ``expected`` or ``timeout`` passes: Postfix logs a
        delivery (qmgr, discard) a moment after its smtpd took the message."""
        deadline = time.monotonic() + timeout
        while (found := self.count(pattern)) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return found

    @property
    def connections(self) -> int:
        """Connections the smtpd accepted a session on (refused ones included)."""
        return self.count(r"smtpd\[\d+\]: connect from")

    @property
    def refused_connections(self) -> int:
        return self.count(r"warning: Connection (?:rate|concurrency) limit exceeded")

    @property
    def delivered(self) -> int:
        return self.count(r"status=sent ")


def _postfix(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin"}
    return subprocess.run(
        [POSTFIX, "-c", str(directory), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def postfix_receiver(
    *, time_unit: str = "5s", policy_port: int | None = None, **limits: int | str
) -> Iterator[Receiver]:
    # Short path: Postfix's unix sockets live under it (108-byte limit).
    directory = Path(tempfile.mkdtemp(prefix="pf", dir="/tmp"))
    directory.chmod(0o755)  # Postfix's own user must reach its queue and data directories
    port = free_port()
    (directory / "queue").mkdir()
    (directory / "data").mkdir()
    shutil.chown(directory / "data", "postfix")
    restrictions = "permit_mynetworks, reject"
    recipient_restrictions = ""
    if policy_port is not None:
        recipient_restrictions = (
            f"smtpd_recipient_restrictions = check_policy_service inet:127.0.0.1:{policy_port}, "
            "permit\n"
        )
    settings = "".join(f"{key} = {value}\n" for key, value in limits.items())
    (directory / "main.cf").write_text(
        f"""compatibility_level = 3.6
queue_directory = {directory}/queue
data_directory = {directory}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = sink.test
mydomain = sink.test
myorigin = sink.test
mydestination =
mynetworks = 127.0.0.0/8
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtpd_relay_restrictions = {restrictions}
{recipient_restrictions}default_transport = discard:sink
relay_transport = discard:sink
local_transport = discard:sink
smtpd_client_event_limit_exceptions =
anvil_rate_time_unit = {time_unit}
maillog_file_prefixes = {directory}
maillog_file = {directory}/maillog
smtputf8_enable = no
biff = no
smtpd_tls_security_level = none
{settings}"""
    )
    (directory / "master.cf").write_text(
        f"""127.0.0.1:{port} inet n - n - - smtpd
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
anvil unix - - n - 1 anvil
discard unix - - n - - discard
proxymap unix - - n - - proxymap
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""
    )
    started = _postfix(directory, "start")
    try:
        if started.returncode != 0:
            raise RuntimeError(f"postfix did not start: {started.stdout}{started.stderr}")
        _wait_listening(port)
        yield Receiver(port, directory)
    finally:
        _postfix(directory, "stop")
        pid_file = directory / "queue" / "pid" / "master.pid"
        end = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < end:
            time.sleep(0.05)
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def postgrey_server(*, delay: int = 2) -> Iterator[int]:
    """postgrey on a free loopback port, its own db directory; yields the port. Its reply
    names the seconds left ("Greylisted for 2 seconds")."""
    directory = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))
    directory.chmod(0o755)
    shutil.chown(directory, "postgrey" if _user_exists("postgrey") else "nobody")
    port = free_port()
    empty = directory / "whitelist"
    empty.write_text("")
    user = "postgrey" if _user_exists("postgrey") else "nobody"
    process = subprocess.Popen(
        [
            POSTGREY,
            f"--inet=127.0.0.1:{port}",
            f"--dbdir={directory}",
            f"--delay={delay}",
            f"--user={user}",
            f"--group={'postgrey' if user == 'postgrey' else 'nogroup'}",
            f"--whitelist-clients={empty}",
            f"--whitelist-recipients={empty}",
            "--auto-whitelist-clients=0",
            # Name the delay in the reply (a documented postgrey option many sites use).
            "--greylist-text=Greylisted for %s seconds, see http://postgrey.schweikert.ch/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
