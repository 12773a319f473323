"""A throwaway PostgreSQL cluster for tests: `initdb` + `pg_ctl` from Debian's `postgresql`
package, in a temporary directory, on a free 127.0.0.1 port, stopped and removed after.

initdb refuses root, so as root the cluster runs as the `postgres` user (the package creates
it). Tests skip when the binaries are absent, unless MAILCTL_REQUIRE_POSTGRES is set (CI).
Logins: ``mailctl`` (trust) for the tests, ``mailctl_pw`` (password ``right-password``,
scram) for the bad-password test.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PASSWORD_USER = "mailctl_pw"
PASSWORD = "right-password"


def pg_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin holding initdb and pg_ctl, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgCluster:
    """One running throwaway cluster."""

    bin_dir: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _as_owner(self, *args: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *args]
        return list(args)

    def url(self, dbname: str = "postgres", user: str = "mailctl") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        subprocess.run(
            self._as_owner(
                str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l",
                str(self.root / "log"), "-w", "-t", "60", "start",
            ),
            check=True, capture_output=True,
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            self._as_owner(
                str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"
            ),
            capture_output=True,
        )

    def restart(self) -> None:
        self.stop()
        self.start()

    def admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]

    def new_database(self, name: str) -> str:
        self.admin(f'CREATE DATABASE "{name}"')
        return self.url(name)


def start_cluster() -> PgCluster:
    bin_dir = pg_bin_dir()
    assert bin_dir is not None
    root = Path(tempfile.mkdtemp(prefix="mailctl-pg-"))
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = PgCluster(bin_dir, root, free_port())
    subprocess.run(
        cluster._as_owner(
            str(bin_dir / "initdb"), "-D", str(cluster.data), "-U", "mailctl",
            "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
        ),
        check=True, capture_output=True,
    )  # fmt: skip
    conf = cluster.data / "postgresql.conf"
    with conf.open("a") as f:
        f.write(
            f"listen_addresses = '127.0.0.1'\nport = {cluster.port}\n"
            f"unix_socket_directories = '{root}'\nfsync = off\nsynchronous_commit = off\n"
            "full_page_writes = off\nmax_connections = 200\nshared_buffers = 128MB\n"
        )
    hba = cluster.data / "pg_hba.conf"
    hba.write_text(
        f"local all all trust\nhost all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\n"
        "host all all 127.0.0.1/32 trust\n"
    )
    cluster.start()
    cluster.admin(f"CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}'")
    return cluster


def remove_cluster(cluster: PgCluster) -> None:
    cluster.stop("immediate")
    for _ in range(50):
        if not (cluster.data / "postmaster.pid").exists():
            break
        time.sleep(0.1)
    shutil.rmtree(cluster.root, ignore_errors=True)
