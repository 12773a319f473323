"""The unsubscribe endpoint under uvicorn on a loopback port (`mailctl unsubscribe serve`)."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mailctl.store.sqlite import SqliteStore
from mailctl.unsubscribe.tokens import Signer, load_secret
from tests.helpers.unsubscribe_server import UnsubscribeServer

ONE_CLICK = b"List-Unsubscribe=One-Click"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
NOW = time.time()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "m.db"
    with SqliteStore.open(path) as store:
        with store.transaction():
            store.create_campaign(
                name="news",
                path="c.yaml",
                profile="sandbox",
                traffic_class="marketing",
                pool="default",
                list_name="customers",
                content={},
                content_hash="x",
                now=NOW,
            )
    return path


@pytest.fixture
def signer(db: Path) -> Signer:
    return Signer(load_secret(None, db))  # the key file `serve` creates or finds


@pytest.fixture
def server(tmp_path: Path, db: Path, signer: Signer) -> Iterator[UnsubscribeServer]:
    running = UnsubscribeServer(tmp_path, db, "--rate-limit", "1000000", "--burst", "100000")
    try:
        yield running
    finally:
        assert running.stop() == 0, running.log.read_text()


def path_for(token: str) -> str:
    return "/unsubscribe?" + urllib.parse.urlencode({"t": token})


def token(signer: Signer, address: str, *, expires: float = NOW + 86400) -> str:
    return signer.token(address, "news", "customers", expires)


def rows(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT address, reason, source, count FROM suppression ORDER BY address"
        ).fetchall()
    finally:
        conn.close()


def multipart(fields: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """A body the way a browser or Gmail's unsubscriber sends multipart/form-data."""
    boundary = "----mailctltest7MA4YWxkTrZu0gW"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    ]
    body = ("".join(parts) + f"--{boundary}--\r\n").encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_one_click_post_form_encoded_unsubscribes_with_200_and_no_redirect(
    server: UnsubscribeServer, signer: Signer, db: Path
) -> None:
    status, headers, body = server.request(
        "POST", path_for(token(signer, "jane@example.com")), ONE_CLICK, FORM
    )
    assert status == 200
    assert "location" not in headers
    assert body == b"unsubscribed\n"
    assert rows(db) == [("jane@example.com", "unsubscribe", "one-click:news", 1)]
    conn = sqlite3.connect(db)
    first_seen = conn.execute("SELECT first_seen FROM suppression").fetchone()[0]
    assert abs(first_seen - time.time()) < 60


def test_one_click_post_multipart_unsubscribes(
    server: UnsubscribeServer, signer: Signer, db: Path
) -> None:
    body, headers = multipart({"List-Unsubscribe": "One-Click"})
    status, answer_headers, answer = server.request(
        "POST", path_for(token(signer, "joe@example.com")), body, headers
    )
    assert (status, answer) == (200, b"unsubscribed\n")
    assert "location" not in answer_headers
    assert rows(db) == [("joe@example.com", "unsubscribe", "one-click:news", 1)]


def test_get_shows_a_masked_confirm_page_and_changes_nothing(
    server: UnsubscribeServer, signer: Signer, db: Path
) -> None:
    for method in ("GET", "HEAD", "GET"):
        status, headers, body = server.request(method, path_for(token(signer, "jane@example.com")))
        assert status == 200
    assert "jane@example.com" not in body.decode()
    assert "j***e@example.com" in body.decode()
    assert '<form method="post">' in body.decode()
    assert headers["content-security-policy"].startswith("default-src 'none'; style-src 'sha256-")
    assert headers["referrer-policy"] == "no-referrer"
    assert rows(db) == []


def test_a_form_post_without_the_servers_confirm_value_changes_nothing(
    server: UnsubscribeServer, signer: Signer, db: Path
) -> None:
    path = path_for(token(signer, "jane@example.com"))
    status, _, body = server.request("POST", path, b"confirm=forged", FORM)
    assert status == 400
    assert b"Nothing was changed" in body
    status, _, body = server.request("POST", path, b"", FORM)
    assert status == 400
    assert rows(db) == []


def test_the_confirm_form_unsubscribes_and_shows_a_confirmation(
    server: UnsubscribeServer, signer: Signer, db: Path
) -> None:
    value = token(signer, "jane@example.com")
    body = urllib.parse.urlencode({"confirm": signer.form_check(value)}).encode()
    status, _, page = server.request("POST", path_for(value), body, FORM)
    assert status == 200
    assert b"You are unsubscribed" in page and b"j***e@example.com" in page
    assert rows(db) == [("jane@example.com", "unsubscribe", "web-confirm:news", 1)]


def test_tampered_expired_cross_address_and_malformed_tokens_get_4xx_and_change_nothing(
    server: UnsubscribeServer, signer: Signer, db: Path
) -> None:
    good = token(signer, "jane@example.com")
    payload, mac = good.split(".")
    other_payload = token(signer, "victim@example.com").split(".")[0]
    flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    other_key = Signer(b"another-secret-of-enough-length").token(
        "jane@example.com", "news", "customers", NOW + 86400
    )
    cases = {
        "tampered": (flipped + "." + mac, 403, b"This unsubscribe link is not valid"),
        "cross-address": (other_payload + "." + mac, 403, b"This unsubscribe link is not valid"),
        "other key": (other_key, 403, b"This unsubscribe link is not valid"),
        "expired": (
            token(signer, "jane@example.com", expires=NOW - 10),
            410,
            b"This unsubscribe link has expired",
        ),
        "malformed": ("not-a-token", 400, b"This unsubscribe link is not valid"),
    }
    for name, (value, expected, text) in cases.items():
        for method, body in (("POST", ONE_CLICK), ("GET", None)):
            status, _, page = server.request(method, path_for(value), body, FORM)
            assert (name, method, status) == (name, method, expected)
            assert text in page and b"Nothing was changed" in page
    status, _, _ = server.request("POST", "/unsubscribe", ONE_CLICK, FORM)
    assert status == 400
    assert rows(db) == []


def test_200_parallel_one_click_posts_each_unsubscribe_exactly_once(
    server: UnsubscribeServer, signer: Signer, db: Path
) -> None:
    addresses = [f"user{i}@example.com" for i in range(200)]
    paths = [path_for(token(signer, address)) for address in addresses]
    # The same link pressed twice (a mail client retrying) counts once too.
    paths += paths[:20]
    with ThreadPoolExecutor(max_workers=64) as pool:
        statuses = list(pool.map(lambda p: server.request("POST", p, ONE_CLICK, FORM)[0], paths))
    assert statuses == [200] * 220
    assert rows(db) == sorted((a, "unsubscribe", "one-click:news", 1) for a in addresses)


def test_health_and_a_json_access_log_without_tokens(
    server: UnsubscribeServer, signer: Signer
) -> None:
    status, _, body = server.request("GET", "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    value = token(signer, "jane@example.com")
    server.request("POST", path_for(value), ONE_CLICK, FORM)
    time.sleep(0.2)
    lines = server.log.read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert {
        "method": "POST",
        "path": "/unsubscribe",
        "status": 200,
        "outcome": "unsubscribed",
    }.items() <= entries[-1].items()
    assert value not in server.log.read_text()


def test_requests_are_rate_limited_per_client(tmp_path: Path, db: Path, signer: Signer) -> None:
    running = UnsubscribeServer(tmp_path, db, "--rate-limit", "1", "--burst", "3")
    try:
        statuses = [
            running.request("GET", path_for(token(signer, "a@example.com")))[0] for _ in range(5)
        ]
    finally:
        assert running.stop() == 0
    assert statuses == [200, 200, 200, 429, 429]


def test_profile_scope_list_unsubscribes_from_the_campaigns_list_only(
    tmp_path: Path, db: Path, signer: Signer
) -> None:
    (tmp_path / "profiles.yaml").write_text(
        "default_profile: sandbox\nprofiles:\n  sandbox:\n    transport: sandbox\n"
        "    unsubscribe: {scope: list}\n"
    )
    running = UnsubscribeServer(tmp_path, db)
    try:
        status, _, _ = running.request(
            "POST", path_for(token(signer, "jane@example.com")), ONE_CLICK, FORM
        )
    finally:
        assert running.stop() == 0
    assert status == 200
    assert rows(db) == []
    conn = sqlite3.connect(db)
    assert conn.execute(
        "SELECT list_name, address, reason, source FROM list_unsubscribes"
    ).fetchall() == [("customers", "jane@example.com", "unsubscribe", "one-click:news")]
