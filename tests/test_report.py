"""`mailctl report`: real campaigns sent to simulated providers, then reports checked exactly."""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import sqlite3
import textwrap
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from mailctl.bounces.suppression import import_reports
from mailctl.config.profiles import load_profiles
from mailctl.delivery.campaigns import prepare
from mailctl.delivery.context import SendOptions
from mailctl.delivery.engine import Engine
from mailctl.errors import MailctlError
from mailctl.report.data import build_report, is_throttle
from mailctl.report.html import render_html
from mailctl.report.tables import render_tables
from mailctl.sim.behaviours import AddressRule, SimBehaviour
from mailctl.sim.dsn import append_to_mbox, build_dsn
from mailctl.sim.replies import YAHOO_TSS04, SimReply
from mailctl.store.sqlite import SqliteStore
from mailctl.store.sqlite_schema import MIGRATIONS
from tests.helpers.clock import FakeClock
from tests.helpers.workspace import make_workspace

T0 = 1_800_000_000.0  # when the campaign is queued
T1 = T0 + 120.0  # when the engine's (fake) clock sends it
SCRIPT = "<script>alert(1)</script>"
TWO_IPS = "    pools:\n      default: [127.0.0.1, 127.0.0.2]\n"


def run_engine(store: SqliteStore, job: Any, at: float, **options: Any) -> None:
    run_id = store.start_run(1, "test", at)
    engine = Engine(
        store, [job], run_id=run_id, clock=FakeClock(at), options=SendOptions(**options)
    )
    asyncio.run(engine.run())


def write_list(ws: Path, name: str, addresses: list[str]) -> None:
    (ws / name).write_text("email,first_name\n" + "".join(f"{a},N\n" for a in addresses))


def sent_headers(store: SqliteStore, address: str) -> str:
    tracking = store.conn.execute(
        "SELECT tracking_id FROM messages WHERE email = ?", (address,)
    ).fetchone()[0]
    return (
        f"From: News <news@example.com>\nTo: {address}\nSubject: Hello\n"
        f"Message-ID: <{tracking}@example.com>\nX-Mailctl-ID: {tracking}\n"
    )


def arf(address: str, headers: str) -> bytes:
    return (
        "From: staff@hotmail.example\nTo: fbl@example.com\nSubject: complaint\n"
        f"Date: {email.utils.formatdate(T1 + 600)}\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nThis is an email abuse report.\n\n"
        "--b\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\n"
        f"User-Agent: test/1.0\nVersion: 1\nOriginal-Rcpt-To: {address}\n\n"
        "--b\nContent-Type: text/rfc822-headers\n\n" + headers + "\n--b--\n"
    ).encode()


def dsn(address: str, status: str, diagnostic: str, headers: str) -> bytes:
    return build_dsn(
        reporting_mta="mx.example.net",
        sender="news@example.com",
        rcpt=address,
        status=status,
        diagnostic=diagnostic,
        original_headers=headers.encode(),
        arrival=T1 + 300,
        queue_id="Q1",
    )


@pytest.fixture
def sent(sim_server, tmp_path: Path) -> Path:
    """Campaign `news`: 13 recipients at three providers, sent at T1 from two IPs, then
    a complaint, a hard and a soft bounce imported from a mailbox."""
    server = sim_server(
        SimBehaviour(
            rcpt_rules=(
                AddressRule("user0@example.com", SimReply(550, "5.1.1 <{rcpt}>: user unknown")),
                AddressRule("org0@example.org", SimReply(550, "5.1.1 <{rcpt}>: user unknown")),
                AddressRule("user1@example.com", SimReply(451, f"4.3.0 {SCRIPT} try later")),
                # A throttle, alone at its provider so the lane pause delays nobody else.
                AddressRule("net0@example.net", YAHOO_TSS04),
            )
        )
    )
    ws = make_workspace(tmp_path, server.port, profile_extra=TWO_IPS)
    write_list(
        ws,
        "list.csv",
        [f"user{i}@example.com" for i in range(8)]
        + [f"org{i}@example.org" for i in range(4)]
        + ["net0@example.net"],
    )
    profiles = load_profiles(ws / "profiles.yaml")
    with SqliteStore.open(ws / "m.db") as store:
        prepared = prepare(store, ws / "c.yaml", profiles, now=T0)
        run_engine(store, prepared.job, T1)
        mbox = tmp_path / "reports.mbox"
        append_to_mbox(
            mbox, arf("user3@example.com", sent_headers(store, "user3@example.com")), T1 + 600
        )
        append_to_mbox(
            mbox,
            dsn(
                "user5@example.com",
                "5.1.1",
                "550 5.1.1 User unknown",
                sent_headers(store, "user5@example.com"),
            ),
            T1 + 300,
        )
        append_to_mbox(
            mbox,
            dsn(
                "org2@example.org",
                "4.2.2",
                "452 4.2.2 Mailbox full",
                sent_headers(store, "org2@example.org"),
            ),
            T1 + 300,
        )
        result = import_reports(store, [str(mbox)], now=T1 + 900)
        assert (result.complaints, result.bounces, result.matched) == (1, 2, 3)
    return ws


def expected_delivery(ws: Path, campaign: str) -> dict[str, Any]:
    """Nearest-rank percentiles computed here, from the raw rows."""
    with SqliteStore.open(ws / "m.db") as store:
        seconds = sorted(
            d
            for (d,) in store.conn.execute(
                """SELECT m.sent_at - m.queued_at FROM messages m JOIN campaigns c
               ON c.id = m.campaign_id WHERE c.name = ? AND m.sent_at IS NOT NULL""",
                (campaign,),
            )
        )
    n = len(seconds)
    ranks = {p: -(-p * n // 100) for p in (50, 90, 99)}  # ceil(p * n / 100)
    return {"count": n, **{f"p{p}": seconds[r - 1] for p, r in ranks.items()}, "max": seconds[-1]}


def counts_of(**given: int) -> dict[str, int]:
    counts = dict.fromkeys(
        (
            "total",
            "queued",
            "sending",
            "sent",
            "deferred",
            "bounced",
            "complained",
            "failed",
            "expired",
            "suppressed",
            "cancelled",
            "remaining",
            "answered",
            "bounced_hard",
            "bounced_soft",
        ),
        0,
    )
    counts.update(given)
    return counts


def test_campaign_counts_rates_delivery_and_replies(sent: Path) -> None:
    with SqliteStore.open(sent / "m.db") as store:
        report = build_report(store, "news", now=T1 + 1000)
    assert report["campaign"] == "news" and [c["name"] for c in report["campaigns"]] == ["news"]
    campaign = report["campaigns"][0]
    # user0, org0 refused at RCPT and user5 by DSN: 3 hard; org2's 4.2.2 DSN: soft (still sent).
    # net0's lane is suspended past the 1 h max age: expired, not answered.
    expected = counts_of(
        total=13,
        sent=7,
        deferred=1,
        expired=1,
        bounced=3,
        complained=1,
        remaining=1,
        answered=11,
        bounced_hard=3,
        bounced_soft=1,
    )
    assert campaign["counts"] == expected
    assert report["totals"]["counts"] == expected
    assert campaign["rates"] == {
        "bounce": {"count": 3, "of": 11, "rate": 3 / 11, "threshold": 0.02, "exceeded": True},
        "complaint": {"count": 1, "of": 11, "rate": 1 / 11, "threshold": 0.003, "exceeded": True},
    }
    # Every accepted message (including the ones reported later) was queued at T0 and sent
    # from T1 on (lanes pace the sending on the fake clock).
    assert campaign["delivery_seconds"] == expected_delivery(sent, "news")
    assert campaign["delivery_seconds"]["count"] == 9
    assert 120.0 <= campaign["delivery_seconds"]["p50"] < 180.0
    replies = {r["text"]: r["count"] for r in campaign["top_replies"]}
    assert replies["550 5.1.1 <user0@example.com>: user unknown"] == 1
    assert replies[f"451 4.3.0 {SCRIPT} try later"] == 1
    assert sum(replies.values()) == 4 and len(replies) == 4
    assert all(r["code"] in (421, 451, 550) for r in campaign["top_replies"])

    providers = {p["provider"]: p for p in report["by_provider"]}
    assert set(providers) == {"example.com", "example.org", "example.net"}
    assert providers["example.com"]["counts"] == counts_of(
        total=8,
        sent=4,
        deferred=1,
        bounced=2,
        complained=1,
        remaining=1,
        answered=7,
        bounced_hard=2,
    )
    assert providers["example.org"]["counts"] == counts_of(
        total=4, sent=3, bounced=1, answered=4, bounced_hard=1, bounced_soft=1
    )
    assert providers["example.org"]["rates"]["bounce"]["rate"] == 1 / 4
    net = providers["example.net"]
    assert net["counts"] == counts_of(total=1, expired=1)
    assert net["rates"]["bounce"]["rate"] is None and not net["rates"]["bounce"]["exceeded"]
    # The TSS04 reply is about the lane: one throttle there, none elsewhere.
    assert net["throttles"] == 1 and [r["count"] for r in net["throttle_reasons"]] == [1]
    assert providers["example.com"]["throttles"] == providers["example.org"]["throttles"] == 0

    ips = {i["ip"]: i for i in report["by_ip"]}
    assert set(ips) <= {"127.0.0.1", "127.0.0.2"} and ips
    for key in ("total", "sent", "bounced", "complained", "deferred", "expired", "bounced_soft"):
        assert sum(i["counts"][key] for i in ips.values()) == expected[key]
    assert sum(i["throttles"] for i in ips.values()) == 1
    assert all(i["warmup"] is None for i in ips.values())

    series = report["series"]
    assert series["sends"]["bucket_seconds"] == 3600
    hour = int(T1 // 3600 * 3600)
    assert {(p["t"], p["provider"]): p["sent"] for p in series["sends"]["points"]} == {
        (hour, "example.com"): 6,
        (hour, "example.org"): 3,
    }
    assert series["rates"]["bucket_seconds"] == 3600
    assert series["rates"]["points"] == [
        {
            "t": hour,
            "answered": 11,
            "bounced_hard": 3,
            "complaints": 1,
            "bounce_rate": 3 / 11,
            "complaint_rate": 1 / 11,
        }
    ]


def test_lane_pauses_come_from_the_lanes_tables(sent: Path) -> None:
    with SqliteStore.open(sent / "m.db") as store:
        report = build_report(store, "news", now=T1 + 1)
        later = build_report(store, "news", now=T1 + 30 * 86400)
    paused = [lane for lane in report["lanes"] if lane["provider"] == "example.net"]
    assert paused and paused[0]["mode"] != "normal" and paused[0]["active"]
    assert not any(lane["active"] for lane in later["lanes"] if lane["until"] is not None)
    net = next(p for p in report["by_provider"] if p["provider"] == "example.net")
    assert net["lane_pauses"] == paused
    assert net["pauses"] >= 1 and net["pause_events"][0]["provider"] == "example.net"


def test_a_database_from_before_reply_scopes_reports_the_same_after_migrating(
    sent: Path, tmp_path: Path
) -> None:
    with SqliteStore.open(sent / "m.db") as store:
        report = build_report(store, None, now=T1 + 1000)
        scopes = dict(store.conn.execute("SELECT rule, scope FROM replies"))
    assert scopes == {
        "yahoo.tss04": "lane",
        "text.userunknown": "recipient",
        "status.4.3.0": "transient",
    }
    # The same database as schema version 4 left it: replies without a scope column.
    old = tmp_path / "old.db"
    (sent / "m.db").rename(old)
    conn = sqlite3.connect(old)
    conn.execute("ALTER TABLE replies DROP COLUMN scope")
    for later in (  # what migrations 6, 7, 9, 10, 11, 12 and 13 added (8 re-creates its tables)
        "ALTER TABLE lists DROP COLUMN source",
        "DROP INDEX recipients_email_key",
        "DROP INDEX recipients_merged_into",
        "ALTER TABLE recipients DROP COLUMN email_key",
        "ALTER TABLE recipients DROP COLUMN merged_into",
        "DROP INDEX messages_campaign_wait",
        "ALTER TABLE messages DROP COLUMN wait_kind",
        "ALTER TABLE messages DROP COLUMN wait_reason",
        "DROP TABLE notices",
        "DROP TABLE send_grants",
        *(
            f"ALTER TABLE lanes DROP COLUMN {column}"
            for column in (
                "learned_rate", "learned_peak", "learned_connections", "learned_reason",
                "learned_at", "learned_observed", "learned_step_at", "learned_conn_at",
                "probe_level", "connect_until", "probing", "recent_accepts",
            )
        ),
    ):  # fmt: skip
        conn.execute(later)
    conn.execute("PRAGMA user_version = 4")
    conn.close()
    with SqliteStore.open(old) as store:
        assert store.schema_version == len(MIGRATIONS)
        assert {scope for (scope,) in store.conn.execute("SELECT scope FROM replies")} == {None}
        migrated = build_report(store, None, now=T1 + 1000)
    # Deferred before reasons were stored: the reply's code stands for the reason.
    assert report["deferral_reasons"] == [{"reason": "retry after 451 4.3.0", "count": 1}]
    assert migrated.pop("deferral_reasons") == [{"reason": "retry after 451", "count": 1}]
    del report["deferral_reasons"]
    assert migrated == report
    example_net = next(p for p in migrated["by_provider"] if p["provider"] == "example.net")
    assert example_net["throttles"] == 1


def test_json_shape_is_stable(sent: Path) -> None:
    with SqliteStore.open(sent / "m.db") as store:
        report = build_report(store, None, now=T1 + 1000)
    json.dumps(report)  # plain JSON, nothing to convert
    assert set(report) == {
        "schema_version",
        "generated_at",
        "campaign",
        "thresholds",
        "totals",
        "unsubscribes",
        "campaigns",
        "by_ip",
        "by_provider",
        "lanes",
        "deferral_reasons",
        "bounce_reports",
        "series",
    }
    assert report["schema_version"] == 1 and report["campaign"] is None
    assert report["thresholds"] == {"bounce_rate": 0.02, "complaint_rate": 0.003}
    stats = {"counts", "rates", "delivery_seconds", "top_replies"}
    assert set(report["totals"]) == stats
    assert set(report["campaigns"][0]) == stats | {
        "name",
        "status",
        "stop_reason",
        "profile",
        "traffic_class",
        "pool",
        "list",
        "created_at",
        "updated_at",
    }
    assert set(report["totals"]["counts"]) == set(counts_of())
    assert set(report["totals"]["rates"]) == {"bounce", "complaint"}
    assert set(report["totals"]["rates"]["bounce"]) == {
        "count",
        "of",
        "rate",
        "threshold",
        "exceeded",
    }
    assert set(report["totals"]["delivery_seconds"]) == {"count", "p50", "p90", "p99", "max"}
    assert set(report["totals"]["top_replies"][0]) == {"code", "text", "count"}
    group = {
        "counts",
        "rates",
        "throttles",
        "throttle_reasons",
        "pauses",
        "pause_events",
        "lane_pauses",
    }
    assert all(set(i) == group | {"ip", "warmup"} for i in report["by_ip"])
    assert all(set(p) == group | {"provider"} for p in report["by_provider"])
    reasons = [r for p in report["by_provider"] for r in p["throttle_reasons"]]
    assert reasons and set(reasons[0]) == {"rule", "reason", "count", "first_at", "last_at"}
    assert all(
        set(lane) == {"ip", "provider", "mode", "until", "reason", "rule", "active"}
        for lane in report["lanes"]
    )
    assert set(report["series"]) == {"sends", "rates"}
    assert set(report["series"]["sends"]) == {"bucket_seconds", "providers", "points"}
    assert set(report["series"]["rates"]) == {"bucket_seconds", "points"}
    assert set(report["series"]["rates"]["points"][0]) == {
        "t",
        "answered",
        "bounced_hard",
        "complaints",
        "bounce_rate",
        "complaint_rate",
    }


def test_all_campaigns_newest_first_and_unknown_campaign(sent: Path, sim_server) -> None:
    server = sim_server()
    profiles_text = (sent / "profiles.yaml").read_text()
    (sent / "profiles.yaml").write_text(re.sub(r"port: \d+", f"port: {server.port}", profiles_text))
    write_list(sent, "later.csv", [f"later{i}@example.com" for i in range(5)])
    (sent / "later.yaml").write_text(
        textwrap.dedent("""\
        name: later
        from: "News <news@example.com>"
        subject: "Later"
        text: "Hi, unsubscribe at {{ unsubscribe_url }}"
        recipients: later.csv
        unsubscribe: {url: "https://example.com/u/{{ email | urlencode }}"}
        """)
    )
    profiles = load_profiles(sent / "profiles.yaml")
    with SqliteStore.open(sent / "m.db") as store:
        prepared = prepare(store, sent / "later.yaml", profiles, now=T0 + 5000)
        run_engine(store, prepared.job, T0 + 5060)
        report = build_report(store, None, now=T0 + 6000, breakers=(0.5, 0.5))
        with pytest.raises(MailctlError, match="no campaign named 'nope'"):
            build_report(store, "nope", now=T0)
    assert [c["name"] for c in report["campaigns"]] == ["later", "news"]
    later, news = report["campaigns"]
    assert later["counts"] == counts_of(total=5, sent=5, answered=5)
    assert later["rates"]["bounce"] == {
        "count": 0,
        "of": 5,
        "rate": 0.0,
        "threshold": 0.5,
        "exceeded": False,
    }
    assert not news["rates"]["bounce"]["exceeded"]  # 3/11 is below a 50 % breaker
    assert report["totals"]["counts"]["total"] == 18
    assert report["totals"]["counts"]["sent"] == 12
    assert later["delivery_seconds"] == expected_delivery(sent, "later")


def test_delivery_percentiles_are_nearest_rank(sim_server, tmp_path: Path) -> None:
    server = sim_server()
    ws = make_workspace(tmp_path, server.port, rows=10)
    profiles = load_profiles(ws / "profiles.yaml")
    with SqliteStore.open(ws / "m.db") as store:
        prepared = prepare(store, ws / "c.yaml", profiles, now=T0)
        run_engine(store, prepared.job, T0 + 60, limit=5)
        run_engine(store, prepared.job, T0 + 600)
        report = build_report(store, "news", now=T0 + 700)
    # Five sent from 60 s on, five from 600 s on: rank 5 of 10 is p50, ranks 9 and 10 late.
    delivery = report["campaigns"][0]["delivery_seconds"]
    assert delivery == expected_delivery(ws, "news")
    assert delivery["count"] == 10 and 60 <= delivery["p50"] < 600 <= delivery["p90"]
    assert not report["campaigns"][0]["rates"]["bounce"]["exceeded"]


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)


def test_html_is_self_contained_parsed_and_escaped(sent: Path) -> None:
    with SqliteStore.open(sent / "m.db") as store:
        page = render_html(build_report(store, "news", now=T1 + 1000))
    parser = _Collector()
    parser.feed(page)
    parser.close()
    assert parser.tags[0] == "html" and "body" in parser.tags
    assert parser.tags.count("svg") == 3  # sends per hour, bounce rate, complaint rate
    assert "script" not in parser.tags and "link" not in parser.tags and "img" not in parser.tags
    # Nothing to fetch: no attribute points anywhere, no CSS import or url().
    for name, value in parser.attrs:
        assert not re.match(r"\s*(https?:)?//", value or ""), (name, value)
        assert name not in ("src", "href", "srcset", "xlink:href"), name
    assert "@import" not in page and not re.search(r"url\(", page)
    # The reply text is data: escaped, never markup.
    assert SCRIPT not in page
    assert html_escaped(f"451 4.3.0 {SCRIPT} try later") in page
    # Links inside reply texts appear only as escaped text.
    for match in re.finditer(r"https?://", page):
        before = page[: match.start()]
        assert before.rfind(">") > before.rfind("<"), page[match.start() - 80 : match.end()]
    assert ("http-equiv", "Content-Security-Policy") in parser.attrs
    assert any(
        name == "content" and (value or "").startswith("default-src 'none'")
        for name, value in parser.attrs
    )


def html_escaped(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def test_render_tables_print_data_verbatim(sent: Path) -> None:
    with SqliteStore.open(sent / "m.db") as store:
        for campaign in ("news", None):
            report = build_report(store, campaign, now=T1 + 1000)
            console = Console(record=True, width=160)
            tables = render_tables(report)
            assert tables
            for table in tables:
                console.print(table)
            text = console.export_text()
            assert "[TSS04]" in text  # rich markup in data is printed, not interpreted
            assert SCRIPT in text and "example.net" in text and "27.27%" in text


def test_empty_database_reports_and_renders(tmp_path: Path) -> None:
    with SqliteStore.open(tmp_path / "m.db") as store:
        report = build_report(store, None, now=T0)
    assert report["campaigns"] == [] and report["by_ip"] == [] and report["lanes"] == []
    assert report["totals"]["counts"] == counts_of()
    assert report["totals"]["rates"]["bounce"]["rate"] is None
    page = render_html(report)
    assert page.count("<svg") == 3 and "nothing sent yet" in page
    console = Console(record=True, width=120)
    for table in render_tables(report):
        console.print(table)
    assert "All campaigns" in console.export_text()


@pytest.mark.parametrize(
    ("rule", "reason", "throttle"),
    [
        ("class.421", "toomanyconn", True),
        ("yahoo.tss", "badreputation", True),
        ("google.rate-limited", "badreputation", True),
        ("text.userunknown@connect", "blocked", True),
        ("status.5.1.1", "userunknown", False),
        ("status.4.7.1", "blocked", True),
        ("class.4xx", "undefined", False),
        ("connection", "networkerror", False),
        ("google.receiving-rate", "speeding", False),
        (None, None, False),
    ],
)
def test_which_replies_recorded_without_a_scope_are_throttles(
    rule: str | None, reason: str | None, throttle: bool
) -> None:
    assert is_throttle(None, rule, reason) is throttle


@pytest.mark.parametrize(
    ("scope", "rule", "reason", "throttle"),
    [
        ("lane", "class.4xx", "undefined", True),
        ("transient", "class.421", "toomanyconn", False),
        ("recipient", "status.4.7.1", "blocked", False),
        ("transient", "connection", "networkerror", False),
    ],
)
def test_a_stored_scope_decides_whether_a_reply_is_a_throttle(
    scope: str, rule: str, reason: str, throttle: bool
) -> None:
    assert is_throttle(scope, rule, reason) is throttle
