"""`bounces import` from IMAP and POP3 mailboxes on a real Dovecot started by the test.

Dovecot runs from a throwaway config on loopback ports with a certificate from a CA made for
the test (tests/helpers/dovecot.py). Mail is put into its Maildir as an MDA would.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailctl.cli import run
from mailctl.sim.dsn import build_dsn
from tests.helpers.dovecot import DovecotServer, dovecot_available
from tests.helpers.workspace import make_workspace

if not dovecot_available() and os.environ.get("MAILCTL_REQUIRE_DOVECOT"):
    raise RuntimeError("MAILCTL_REQUIRE_DOVECOT is set but dovecot is not installed (or not root)")
pytestmark = pytest.mark.skipif(
    not dovecot_available(), reason="needs Debian's dovecot-imapd and dovecot-pop3d, as root"
)


@pytest.fixture(scope="module")
def dovecot_server() -> Iterator[DovecotServer]:
    server = DovecotServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def dovecot(dovecot_server: DovecotServer) -> DovecotServer:
    """The module's Dovecot with an empty mailbox."""
    for path in dovecot_server.maildir.rglob("*"):
        if path.is_file() and path.parent.name in ("cur", "new", "tmp"):
            path.unlink()
    for state in dovecot_server.maildir.rglob("dovecot*"):
        if state.is_file():
            state.unlink()
    return dovecot_server


def bounce(index: int) -> bytes:
    rcpt = f"gone{index}@example.net"
    return build_dsn(
        reporting_mta="mx.example.net",
        sender="bounces@example.com",
        rcpt=rcpt,
        status="5.1.1",
        diagnostic=f"550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
        original_headers=f"From: news@example.com\nTo: {rcpt}\nSubject: News {index}\n".encode(),
        arrival=1_790_000_000.0 + index,
        queue_id=f"Q{index:06d}",
    ).replace(b"\n", b"\r\n")


def import_json(
    tmp_path: Path, dovecot: DovecotServer, url: str, capsys, *extra: str
) -> tuple[int, dict | None, str]:
    # The bounces name addresses this database never mailed, so the profile trusts the
    # mailbox (`bounces: {trust_unmatched: true}`): the transport is under test here, the
    # evidence rules in tests/test_bounce_evidence.py.
    if not (tmp_path / "profiles.yaml").exists():
        make_workspace(tmp_path, 25, rows=1, profile_extra="    bounces: {trust_unmatched: true}\n")
    code = run(
        [
            "--db",
            str(tmp_path / "m.db"),
            "--profiles",
            str(tmp_path / "profiles.yaml"),
            "bounces",
            "import",
            url,
            "--password-env",
            "MC_TEST_MAILBOX_PW",
            "--ca-file",
            str(dovecot.ca.ca_file),
            "--json",
            *extra,
        ]
    )
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out.strip() else None), captured.err


@pytest.fixture(autouse=True)
def mailbox_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MC_TEST_MAILBOX_PW", DovecotServer.password)


def db_counts(tmp_path: Path) -> tuple[int, int, int]:
    conn = sqlite3.connect(tmp_path / "m.db")
    events = conn.execute("SELECT count(*) FROM bounce_events").fetchone()[0]
    rows = conn.execute("SELECT count(*) FROM suppression").fetchone()[0]
    doubled = conn.execute("SELECT count(*) FROM suppression WHERE count > 1").fetchone()[0]
    return events, rows, doubled


def test_imaps_import_of_1000_bounces_then_a_rerun_fetches_nothing(
    tmp_path: Path, dovecot: DovecotServer, capsys
) -> None:
    dovecot.deliver([bounce(i) for i in range(1000)])
    code, result, err = import_json(tmp_path, dovecot, dovecot.url("imaps"), capsys)
    assert code == 0, err
    assert result is not None
    assert (result["messages"], result["bounces"], result["suppressed"]) == (1000, 1000, 1000)
    assert db_counts(tmp_path) == (1000, 1000, 0)
    code, result, err = import_json(tmp_path, dovecot, dovecot.url("imaps"), capsys)
    assert code == 0, err
    assert result is not None
    assert (result["messages"], result["already_imported"]) == (0, 0)
    # New mail after the mark is fetched, and only that.
    dovecot.deliver([bounce(1000), bounce(1001)])
    code, result, err = import_json(tmp_path, dovecot, dovecot.url("imaps"), capsys)
    assert code == 0, err
    assert result is not None
    assert (result["messages"], result["bounces"]) == (2, 2)
    assert db_counts(tmp_path) == (1002, 1002, 0)


def test_imap_move_to_moves_imported_messages_out_of_the_folder(
    tmp_path: Path, dovecot: DovecotServer, capsys
) -> None:
    dovecot.deliver([bounce(i) for i in range(30)])
    code, result, err = import_json(
        tmp_path, dovecot, dovecot.url("imaps"), capsys, "--move-to", "Processed"
    )
    assert code == 0, err
    assert result is not None and result["bounces"] == 30
    inbox = [p for d in ("cur", "new") for p in (dovecot.maildir / d).iterdir()]
    processed = [p for d in ("cur", "new") for p in (dovecot.maildir / ".Processed" / d).iterdir()]
    assert (len(inbox), len(processed)) == (0, 30)
    # The moved messages are not imported again from the folder they went to either.
    code, result, err = import_json(tmp_path, dovecot, dovecot.url("imaps"), capsys)
    assert code == 0, err
    assert result is not None and result["messages"] == 0


def test_imap_delete_expunges_imported_messages(
    tmp_path: Path, dovecot: DovecotServer, capsys
) -> None:
    dovecot.deliver([bounce(i) for i in range(7)])
    code, result, err = import_json(tmp_path, dovecot, dovecot.url("imaps"), capsys, "--delete")
    assert code == 0, err
    assert result is not None and result["bounces"] == 7
    assert [p for d in ("cur", "new") for p in (dovecot.maildir / d).iterdir()] == []


def test_move_to_and_delete_together_are_a_usage_error(
    tmp_path: Path, dovecot: DovecotServer, capsys
) -> None:
    code, result, err = import_json(
        tmp_path, dovecot, dovecot.url("pop3s"), capsys, "--move-to", "Done"
    )
    assert (code, result) == (2, None)
    assert err == f"Error: {dovecot.url('pop3s')}: --move-to needs IMAP (POP3 has no folders)\n"
    code, result, err = import_json(
        tmp_path, dovecot, dovecot.url("imaps"), capsys, "--move-to", "Done", "--delete"
    )
    assert (code, err) == (2, "Error: give --move-to or --delete, not both\n")


def test_plain_imap_uses_starttls(tmp_path: Path, dovecot: DovecotServer, capsys) -> None:
    dovecot.deliver([bounce(i) for i in range(5)])
    code, result, err = import_json(tmp_path, dovecot, dovecot.url("imap"), capsys)
    assert code == 0, err
    assert result is not None and result["bounces"] == 5
    assert (
        "TLS"
        in [
            line
            for line in dovecot.log.read_text().splitlines()
            if "imap-login: Info: Login" in line
        ][-1]
    )


def test_pop3s_import_of_1000_bounces_then_a_rerun_fetches_nothing(
    tmp_path: Path, dovecot: DovecotServer, capsys
) -> None:
    dovecot.deliver([bounce(i) for i in range(1000)])
    code, result, err = import_json(tmp_path, dovecot, dovecot.url("pop3s"), capsys)
    assert code == 0, err
    assert result is not None
    assert (result["messages"], result["bounces"], result["suppressed"]) == (1000, 1000, 1000)
    code, result, err = import_json(tmp_path, dovecot, dovecot.url("pop3s"), capsys)
    assert code == 0, err
    assert result is not None and (result["messages"], result["already_imported"]) == (0, 0)
    assert db_counts(tmp_path) == (1000, 1000, 0)


def test_pop3_with_stls_and_delete_empties_the_mailbox(
    tmp_path: Path, dovecot: DovecotServer, capsys
) -> None:
    dovecot.deliver([bounce(i) for i in range(12)])
    code, result, err = import_json(tmp_path, dovecot, dovecot.url("pop3"), capsys, "--delete")
    assert code == 0, err
    assert result is not None and result["bounces"] == 12
    left = [p for d in ("cur", "new") for p in (dovecot.maildir / d).iterdir()]
    assert left == []


@pytest.mark.parametrize("scheme", ["imaps", "pop3s"])
def test_a_wrong_password_is_one_line_and_exit_2(
    tmp_path: Path, dovecot: DovecotServer, capsys, monkeypatch, scheme: str
) -> None:
    monkeypatch.setenv("MC_TEST_MAILBOX_PW", "not-the-password")
    code, result, err = import_json(tmp_path, dovecot, dovecot.url(scheme), capsys)
    assert code == 2
    assert result is None
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"Error: {dovecot.url(scheme)}: login failed: ")
    assert "not-the-password" not in err


def test_an_untrusted_certificate_is_refused_unless_insecure(
    tmp_path: Path, dovecot: DovecotServer, capsys
) -> None:
    dovecot.deliver([bounce(1)])
    url = dovecot.url("imaps")
    code = run(
        [
            "--db",
            str(tmp_path / "m.db"),
            "bounces",
            "import",
            url,
            "--password-env",
            "MC_TEST_MAILBOX_PW",
            "--json",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"Error: {url}: TLS certificate not trusted: ")
    code = run(
        [
            "--db",
            str(tmp_path / "m.db"),
            "bounces",
            "import",
            url,
            "--password-env",
            "MC_TEST_MAILBOX_PW",
            "--json",
            "--insecure",
        ]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out)["bounces"] == 1


class DroppingProxy:
    """A TCP relay to the server that cuts the connection once the server sent `limit` bytes."""

    def __init__(self, port: int, limit: int) -> None:
        self.target = port
        self.limit = limit
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        upstream = socket.create_connection(("127.0.0.1", self.target))
        sent = 0

        def pump_up() -> None:
            try:
                while data := client.recv(65536):
                    upstream.sendall(data)
            except OSError:
                pass

        threading.Thread(target=pump_up, daemon=True).start()
        try:
            while sent < self.limit and (data := upstream.recv(65536)):
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (client, upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=5)


@pytest.mark.parametrize("scheme", ["imaps", "pop3s"])
def test_a_server_dropping_mid_fetch_resumes_without_loss_or_double_count(
    tmp_path: Path, dovecot: DovecotServer, capsys, scheme: str
) -> None:
    dovecot.deliver([bounce(i) for i in range(1000)])
    proxy = DroppingProxy(dovecot.ports[scheme], limit=1_200_000)  # about half the mailbox
    try:
        url = dovecot.url(scheme).replace(str(dovecot.ports[scheme]), str(proxy.port))
        code, result, err = import_json(tmp_path, dovecot, url, capsys)
    finally:
        proxy.close()
    assert code == 1
    assert result is None
    assert "connection lost" in err and "run again to resume" in err
    events_after_drop = db_counts(tmp_path)[0]
    assert 0 < events_after_drop < 1000
    # The mark is per mailbox URL; resume through the proxy's address would be the same
    # mailbox in real life, so run again against the same mailbox key.
    code, result, err = import_json(
        tmp_path, dovecot, url.replace(str(proxy.port), str(dovecot.ports[scheme])), capsys
    )
    assert code == 0, err
    assert result is not None
    assert db_counts(tmp_path) == (1000, 1000, 0)
    # Only what the first run had not committed was fetched again.
    assert result["bounces"] == 1000 - events_after_drop
