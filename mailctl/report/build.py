"""What happened to the mail: aggregates for people (rich tables, one HTML page) and scripts (JSON).

`build_report` reads the store and returns plain data (the JSON of `mailctl report --json`);
`render_tables` and `render_html` only format that data, so all three views always agree.
Nothing here prints: the CLI prints what these functions return.

JSON schema (``schema_version`` 1)
----------------------------------

Every time (``*_at``, ``t``) is in seconds since the epoch, UTC. Every duration is in
seconds. Rates are fractions (0.02 = 2 %), ``null`` when nothing was answered yet. Lists are
always present (possibly empty); keys are never left out.

::

    {
      "schema_version": 1,
      "generated_at": 1800000000.0,
      "campaign": "november" | null,      # the campaign asked for; null: all campaigns
      "thresholds": {"bounce_rate": 0.02, "complaint_rate": 0.003},   # circuit breakers
      "totals": Stats,                    # over the selected campaign(s)
      "campaigns": [Campaign, ...],       # newest first; one entry when a campaign is named
      "by_ip": [Lane-group, ...],         # per sending IP, sorted by IP
      "by_provider": [Lane-group, ...],   # per mailbox provider, sorted by name
      "lanes": [LanePause, ...],          # every IP x provider lane not at normal speed now
      "series": Series                    # for charts, over the selected campaign(s)
    }

    Campaign = Stats + {"name", "status", "stop_reason", "profile", "traffic_class", "pool",
                        "list", "created_at", "updated_at"}

    Stats = {
      "counts": Counts,
      "rates": {"bounce": Rate, "complaint": Rate},
      "delivery_seconds": {"count": int, "p50", "p90", "p99", "max": float | null},
      "top_replies": [{"code": int | null, "text": str | null, "count": int}, ...]  # <= 10
    }

    Counts = {
      # messages by state (these partition "total"):
      "total", "queued", "sending", "sent", "deferred", "bounced", "complained", "failed",
      "expired", "suppressed", "cancelled",
      "remaining",      # queued + deferred + sending: still to be tried
      "answered",       # a receiver gave a final answer: sent, bounced, complained or failed
                        # after an attempt (the rates' denominator, as for the breaker)
      "bounced_hard",   # state bounced, or an imported bounce report says permanent failure
                        # (a block reported by DSN leaves the message failed and counts here)
      "bounced_soft"    # an imported bounce report says temporary failure, not also hard
                        # (such a message may be in state sent: its relay accepted it)
    }

    Rate = {"count": int, "of": int, "rate": float | null, "threshold": float,
            "exceeded": bool}    # exceeded: rate strictly above threshold (exact decimals)
                                 # bounce count = bounced_hard; complaint count = messages
                                 # in state complained or named by a complaint report

    Lane-group = {
      "ip": str | "provider": str,        # the key of the group
      "counts": Counts, "rates": {"bounce": Rate, "complaint": Rate},
      "throttles": int,                   # replies whose scope is the lane (throttles, blocks)
      "throttle_reasons": [{"rule", "reason", "count", "first_at", "last_at"}, ...],
      "pauses": int,                      # times a lane was paused (suspended, slowed,
                                          # disabled, backed off) while sending these
      "pause_events": [{"ip", "provider", "kind", "rule", "count", "last_at", "last_until",
                        "reason"}, ...],  # per lane, kind and rule; reason: the last one's
      "lane_pauses": [LanePause, ...],    # this IP's or provider's lanes not at normal speed
      "warmup": null | {...}              # by_ip only: the IP's warm-up stage (filled by warmup)
    }

    LanePause = {"ip", "provider", "mode", "until": float | null, "reason", "rule",
                 "active": bool}          # active: until is null or still in the future

    Series = {
      "sends": {"bucket_seconds": 3600, "providers": [str, ...],
                "points": [{"t", "provider", "sent"}, ...]},       # accepted, by sent_at
      "rates": {"bucket_seconds": 3600 | 86400,   # hours when the answers span <= 48 h
                "points": [{"t", "answered", "bounced_hard", "complaints",
                            "bounce_rate", "complaint_rate"}, ...]}
    }

A message's lane (``ip``, ``provider``) is the one of its last attempt; messages never
attempted (queued, suppressed) belong to no lane and appear in ``by_ip``/``by_provider`` of
no one. Throttle events are counted per lane that answered. Bounces and complaints that arrive
later, by report, count in the period the message was sent in.

Checking the HTML page by eye
-----------------------------

The page is one self-contained file (inline CSS and SVG, no scripts, no fonts or images from
anywhere, a Content-Security-Policy that forbids loading any). To look at it as a browser
renders it, headless Chromium (Debian package ``chromium``)::

    mailctl report november --html /tmp/report.html
    chromium --headless --no-sandbox --disable-gpu --disable-background-networking \\
      --disable-component-update --disable-sync --no-first-run \\
      --user-data-dir=$(mktemp -d) --screenshot=/tmp/report.png --window-size=1200,1600 \\
      file:///tmp/report.html

then open ``/tmp/report.png``.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from mailctl.config.provider_rules import Scope, shipped_rules
from mailctl.errors import MailctlError
from mailctl.replies.classify import REASON_SCOPE, RULES
from mailctl.store.sqlite import MESSAGE_STATES

if TYPE_CHECKING:
    from mailctl.store.report_queries import ReportGroup
    from mailctl.store.sqlite import Store

SCHEMA_VERSION = 1
HOUR = 3600
DAY = 86400
TOP_REPLIES = 10

# Message states, in the order people read them (the store's order).
STATES = MESSAGE_STATES
_REMAINING = ("queued", "deferred", "sending")
_ANSWERED = ("sent", "bounced", "complained", "failed")


# --------------------------------------------------------------------------- throttles


@lru_cache(maxsize=1)
def _lane_rule_ids() -> frozenset[str]:
    """Rule ids that are about the lane: lane-scoped ones, and provider rules that act on it
    whatever their scope (Gmail's UnsolicitedMessageError slows the lane)."""
    ids = {rule.id for rule in RULES if rule.scope is Scope.LANE}
    ids |= {rule.id for rule in shipped_rules() if rule.action.affects_lane}
    return frozenset(ids)


@lru_cache(maxsize=1)
def _classifier_rule_ids() -> frozenset[str]:
    return frozenset(rule.id for rule in RULES)


def is_throttle(rule: str | None, reason: str | None) -> bool:
    """Whether a stored reply was about the lane (IP x provider): a throttle or a block.

    Replies keep the classifier's rule id and reason, not its scope, so the scope is read
    back from them: a rule re-read at an SMTP stage ends in ``@stage`` (only ``@connect``
    makes it the lane's), a text rule has its own scope, and status/class rules take the
    reason's scope (``class.421`` -> toomanyconn -> lane).
    """
    if not rule:
        return False
    base, _, stage = rule.rpartition("@") if "@" in rule else (rule, "", "")
    if stage:
        return stage == "connect"
    if base in _lane_rule_ids():
        return True
    if base in _classifier_rule_ids():
        return False
    return REASON_SCOPE.get(reason or "") is Scope.LANE


# --------------------------------------------------------------------------- building


def _counts(states: Mapping[str, Mapping[str, int]] | None) -> dict[str, int]:
    states = states or {}

    def messages(state: str) -> int:
        return states.get(state, {}).get("messages", 0)

    counts = {"total": sum(v.get("messages", 0) for v in states.values())}
    counts.update({state: messages(state) for state in STATES})
    counts["remaining"] = sum(messages(s) for s in _REMAINING)
    counts["answered"] = sum(states.get(s, {}).get("attempted", 0) for s in _ANSWERED)
    counts["bounced_hard"] = messages("bounced") + sum(
        v.get("hard", 0) for s, v in states.items() if s != "bounced"
    )
    counts["bounced_soft"] = sum(v.get("soft", 0) for s, v in states.items() if s != "bounced")
    return counts


def _complaints(states: Mapping[str, Mapping[str, int]] | None) -> int:
    states = states or {}
    return states.get("complained", {}).get("messages", 0) + sum(
        v.get("complaint", 0) for s, v in states.items() if s != "complained"
    )


def _rate(count: int, of: int, threshold: float) -> dict[str, Any]:
    # Compared as exact decimals, like the breaker: 4 of 200 is exactly 2 %, not above it.
    exceeded = of > 0 and Fraction(count, of) > Fraction(repr(threshold))
    return {
        "count": count,
        "of": of,
        "rate": count / of if of else None,
        "threshold": threshold,
        "exceeded": exceeded,
    }


def _rates(
    states: Mapping[str, Mapping[str, int]] | None,
    counts: Mapping[str, int],
    breakers: Sequence[float],
) -> dict[str, Any]:
    return {
        "bounce": _rate(counts["bounced_hard"], counts["answered"], breakers[0]),
        "complaint": _rate(_complaints(states), counts["answered"], breakers[1]),
    }


def _delivery(entry: Mapping[str, Any] | None) -> dict[str, Any]:
    entry = entry or {}
    return {
        "count": entry.get("count", 0),
        "p50": entry.get("p50"),
        "p90": entry.get("p90"),
        "p99": entry.get("p99"),
        "max": entry.get("max"),
    }


def _stats(
    key: Any,
    counts_by: Mapping[Any, Any],
    delivery_by: Mapping[Any, Any],
    replies_by: Mapping[Any, Any],
    breakers: Sequence[float],
) -> dict[str, Any]:
    states = counts_by.get(key)
    counts = _counts(states)
    return {
        "counts": counts,
        "rates": _rates(states, counts, breakers),
        "delivery_seconds": _delivery(delivery_by.get(key)),
        "top_replies": list(replies_by.get(key, [])),
    }


def _throttles(rows: Iterable[Mapping[str, Any]]) -> dict[Any, dict[str, Any]]:
    """key -> {throttles, throttle_reasons} from replies counted per rule."""
    result: dict[Any, dict[str, Any]] = {}
    for row in rows:
        if row["key"] is None or not is_throttle(row["rule"], row["reason"]):
            continue
        entry = result.setdefault(row["key"], {"throttles": 0, "reasons": {}})
        entry["throttles"] += row["count"]
        reason = entry["reasons"].setdefault(
            (row["rule"], row["reason"]),
            {
                "rule": row["rule"],
                "reason": row["reason"],
                "count": 0,
                "first_at": row["first_at"],
                "last_at": row["last_at"],
            },
        )
        reason["count"] += row["count"]
        reason["first_at"] = min(reason["first_at"], row["first_at"])
        reason["last_at"] = max(reason["last_at"], row["last_at"])
    for entry in result.values():
        entry["throttle_reasons"] = sorted(
            entry.pop("reasons").values(), key=lambda r: (-r["count"], r["rule"] or "")
        )
    return result


def _lane_groups(
    store: Store,
    group: ReportGroup,
    campaign_id: int | None,
    lanes: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    breakers: Sequence[float],
) -> list[dict[str, Any]]:
    counts_by = store.report_message_counts(group, campaign_id)
    throttles_by = _throttles(store.report_reply_rules(group, campaign_id))
    keys = sorted(
        {k for k in counts_by if k is not None}
        | set(throttles_by)
        | {e[group] for e in events if e[group] is not None}
    )
    result = []
    for key in keys:
        states = counts_by.get(key)
        counts = _counts(states)
        throttles = throttles_by.get(key, {})
        entry: dict[str, Any] = {
            group: key,
            "counts": counts,
            "rates": _rates(states, counts, breakers),
            "throttles": throttles.get("throttles", 0),
            "throttle_reasons": throttles.get("throttle_reasons", []),
            "pauses": sum(e["count"] for e in events if e[group] == key),
            "pause_events": [dict(e) for e in events if e[group] == key],
            "lane_pauses": [dict(lane) for lane in lanes if lane[group] == key],
        }
        if group == "ip":
            entry["warmup"] = None  # filled by the warm-up layer
        result.append(entry)
    return result


def build_report(
    store: Store,
    campaign: str | None,
    *,
    now: float,
    breakers: tuple[float, float] = (0.02, 0.003),
) -> dict[str, Any]:
    """The report of one campaign (by name) or of all campaigns; see the module docstring.

    `breakers` are the (bounce, complaint) rate thresholds to compare against.
    """
    campaigns = store.report_campaigns(campaign)
    if campaign is not None and not campaigns:
        raise MailctlError(f"no campaign named '{campaign}' (see `mailctl campaign list`)")
    campaign_id = campaigns[0]["id"] if campaign is not None else None

    counts_by = store.report_message_counts("campaign", campaign_id)
    delivery_by = store.report_delivery_times("campaign", campaign_id)
    replies_by = store.report_top_replies("campaign", campaign_id, TOP_REPLIES)
    entries = []
    for row in campaigns:
        entries.append(
            {
                "name": row["name"],
                "status": row["status"],
                "stop_reason": row["stop_reason"],
                "profile": row["profile"],
                "traffic_class": row["traffic_class"],
                "pool": row["pool"],
                "list": row["list_name"],
                "created_at": row["created_at"],
                "updated_at": row["updated_at"],
                **_stats(row["id"], counts_by, delivery_by, replies_by, breakers),
            }
        )
    totals = _stats(
        None,
        store.report_message_counts("all", campaign_id),
        store.report_delivery_times("all", campaign_id),
        store.report_top_replies("all", campaign_id, TOP_REPLIES),
        breakers,
    )

    lanes = [
        {**lane, "active": lane["until"] is None or lane["until"] > now}
        for lane in store.report_lane_rows()
    ]
    events = store.report_lane_events(campaign_id)
    sends = store.report_sends_per_bucket(campaign_id, HOUR)
    first, last = store.report_answer_span(campaign_id)
    rate_bucket = HOUR if first is None or last is None or last - first <= 2 * DAY else DAY
    rate_points = []
    for point in store.report_rates_per_bucket(campaign_id, rate_bucket):
        answered = point["answered"]
        rate_points.append(
            {
                **point,
                "bounce_rate": point["bounced_hard"] / answered if answered else None,
                "complaint_rate": point["complaints"] / answered if answered else None,
            }
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": now,
        "campaign": campaign,
        "thresholds": {"bounce_rate": breakers[0], "complaint_rate": breakers[1]},
        "totals": totals,
        "campaigns": entries,
        "by_ip": _lane_groups(store, "ip", campaign_id, lanes, events, breakers),
        "by_provider": _lane_groups(store, "provider", campaign_id, lanes, events, breakers),
        "lanes": lanes,
        "series": {
            "sends": {
                "bucket_seconds": HOUR,
                "providers": sorted({p["provider"] for p in sends}),
                "points": sends,
            },
            "rates": {"bucket_seconds": rate_bucket, "points": rate_points},
        },
    }


# --------------------------------------------------------------------------- formatting


def format_time(timestamp: float | None, *, minutes: bool = True) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M" if minutes else "%Y-%m-%d", time.gmtime(timestamp))


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d {whole % 86400 // 3600:02d}h"


def format_rate(rate: Mapping[str, Any]) -> str:
    if rate["rate"] is None:
        return "-"
    text = f"{rate['rate'] * 100:.2f}%"
    return text + " !" if rate["exceeded"] else text


def _format_warmup(warmup: Any) -> str:
    if warmup is None:
        return "-"
    if isinstance(warmup, Mapping):
        parts = [f"stage {warmup['stage']}"] if warmup.get("stage") is not None else []
        if warmup.get("status"):
            parts.append(str(warmup["status"]))
        if warmup.get("cap") is not None:
            parts.append(f"cap {warmup['cap']}")
        return ", ".join(parts) or "-"
    return str(warmup)


def _format_pause(lane: Mapping[str, Any]) -> str:
    """Short: the full reason (often a whole reply) is in the lanes table."""
    until = "until resumed" if lane["until"] is None else f"until {format_time(lane['until'])}"
    rule = f" ({lane['rule']})" if lane.get("rule") else ""
    state = "" if lane["active"] else " (over)"
    return f"{lane['mode']} {until}{state}{rule}"


def _format_pause_events(events: Sequence[Mapping[str, Any]], other: str) -> str:
    return "; ".join(
        f"{e[other]} {e['kind']} x{e['count']}" + (f" ({e['rule']})" if e["rule"] else "")
        for e in events
    )


@dataclass(frozen=True)
class Column:
    """One column of a report table, shared by the terminal and the HTML views."""

    header: str
    value: Callable[[Mapping[str, Any]], str]
    numeric: bool = True
    wrap: bool = False  # long free text (replies, reasons): wraps; other cells never do
    # When the cell deserves attention (a rate above its breaker, an active pause).
    alert: Callable[[Mapping[str, Any]], bool] | None = None


def _count(name: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda row: f"{row['counts'][name]:,}"


def _bounced(row: Mapping[str, Any]) -> str:
    return f"{row['counts']['bounced_hard']:,} / {row['counts']['bounced_soft']:,}"


def _rate_column(kind: str, header: str) -> Column:
    return Column(
        header,
        lambda row: format_rate(row["rates"][kind]),
        alert=lambda row: bool(row["rates"][kind]["exceeded"]),
    )


_COUNT_COLUMNS = (
    Column("sent", _count("sent")),
    Column("deferred", _count("deferred")),
    Column("bounced hard/soft", _bounced),
    Column("complained", _count("complained")),
    Column("failed", _count("failed")),
    Column("expired", _count("expired")),
)

CAMPAIGN_COLUMNS = (
    Column("campaign", lambda r: r["name"], numeric=False),
    Column("status", lambda r: r["status"], numeric=False),
    Column("created", lambda r: format_time(r["created_at"], minutes=False), numeric=False),
    *_COUNT_COLUMNS,
    Column("remaining", _count("remaining")),
    _rate_column("bounce", "bounce rate"),
    _rate_column("complaint", "complaint rate"),
    Column("p50 delivery", lambda r: format_duration(r["delivery_seconds"]["p50"])),
)


def _lane_columns(group: str) -> tuple[Column, ...]:
    columns = [
        Column("IP" if group == "ip" else "provider", lambda r: str(r[group]), numeric=False),
        *_COUNT_COLUMNS,
        _rate_column("bounce", "bounce rate"),
        _rate_column("complaint", "complaint rate"),
        Column("throttles", lambda r: f"{r['throttles']:,}", alert=lambda r: r["throttles"] > 0),
        Column(
            "pauses",
            lambda r: (
                _format_pause_events(r["pause_events"], "provider" if group == "ip" else "ip")
                or "-"
            ),
            numeric=False,
            wrap=True,
        ),
        Column(
            "paused now",
            lambda r: (
                "; ".join(
                    f"{lane['provider'] if group == 'ip' else lane['ip']} {_format_pause(lane)}"
                    for lane in r["lane_pauses"]
                    if lane["active"]
                )
                or "-"
            ),
            numeric=False,
            wrap=True,
            alert=lambda r: any(lane["active"] for lane in r["lane_pauses"]),
        ),
    ]
    if group == "ip":
        columns.append(Column("warm-up", lambda r: _format_warmup(r["warmup"]), numeric=False))
    return tuple(columns)


LANE_COLUMNS = (
    Column("IP", lambda r: str(r["ip"]), numeric=False),
    Column("provider", lambda r: str(r["provider"]), numeric=False),
    Column("mode", lambda r: str(r["mode"]), numeric=False, alert=lambda r: bool(r["active"])),
    Column(
        "until",
        lambda r: "until resumed" if r["until"] is None else format_time(r["until"]),
        numeric=False,
    ),
    Column("reason", lambda r: r["reason"] or "-", numeric=False, wrap=True),
    Column("rule", lambda r: r["rule"] or "-", numeric=False),
)

# The stored reply text starts with its code: no separate code column.
REPLY_COLUMNS = (
    Column("count", lambda r: f"{r['count']:,}"),
    Column(
        "reply", lambda r: r["text"] or f"({r['code'] or 'no reply'})", numeric=False, wrap=True
    ),
)


def _summary_rows(stats: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(label, value, alert) lines for one campaign or the totals."""
    counts, rates, delivery = stats["counts"], stats["rates"], stats["delivery_seconds"]
    rows: list[tuple[str, str, bool]] = []
    for name in ("total", *STATES, "remaining"):
        if name in ("sending", "cancelled") and not counts[name]:
            continue
        rows.append((name, f"{counts[name]:,}", False))
    rows.append(("bounced hard / soft", _bounced(stats), False))
    for kind in ("bounce", "complaint"):
        rate = rates[kind]
        rows.append(
            (
                f"{kind} rate",
                f"{format_rate(rate)} ({rate['count']:,} of {rate['of']:,}; "
                f"breaker {rate['threshold'] * 100:g}%)",
                bool(rate["exceeded"]),
            )
        )
    rows.append(
        (
            "delivery p50 / p90 / p99",
            " / ".join(format_duration(delivery[p]) for p in ("p50", "p90", "p99"))
            + f" (max {format_duration(delivery['max'])}, {delivery['count']:,} sent)",
            False,
        )
    )
    return rows


def _heading(report: Mapping[str, Any]) -> str:
    return f"Campaign {report['campaign']}" if report["campaign"] else "All campaigns"


def _sections(report: Mapping[str, Any]) -> list[tuple[str, Sequence[Column], list[Any]]]:
    """The tables after the summary, in order: (title, columns, rows)."""
    sections: list[tuple[str, Sequence[Column], list[Any]]] = []
    if report["campaign"] is None:
        sections.append(("Campaigns, newest first", CAMPAIGN_COLUMNS, report["campaigns"]))
    sections.append(("Top replies", REPLY_COLUMNS, report["totals"]["top_replies"]))
    sections.append(("By sending IP", _lane_columns("ip"), report["by_ip"]))
    sections.append(("By provider", _lane_columns("provider"), report["by_provider"]))
    if report["lanes"]:
        sections.append(("Lanes not at normal speed", LANE_COLUMNS, report["lanes"]))
    return sections


# --------------------------------------------------------------------------- terminal


def render_tables(report: Mapping[str, Any]) -> list[Table]:
    """Rich tables for the terminal, in reading order. Data cells are `Text`, never markup:
    reply texts such as ``[TSS04]`` must print as they are."""
    summary = Table(title=_heading(report), show_header=False, title_justify="left")
    summary.add_column("what", style="bold")
    summary.add_column("value")
    if report["campaign"] is not None and report["campaigns"]:
        campaign = report["campaigns"][0]
        for key in ("status", "stop_reason", "profile", "traffic_class", "pool", "list"):
            if campaign[key] is not None:
                summary.add_row(key.replace("_", " "), Text(str(campaign[key])))
    for label, value, alert in _summary_rows(report["totals"]):
        summary.add_row(label, Text(value, style="bold red" if alert else ""))
    tables = [summary]
    for title, columns, rows in _sections(report):
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(
                column.header,
                justify="right" if column.numeric else "left",
                overflow="fold",
            )
        for row in rows:
            table.add_row(
                *(
                    Text(
                        column.value(row),
                        style="bold red" if column.alert and column.alert(row) else "",
                    )
                    for column in columns
                )
            )
        if not rows:
            table.add_row(*(Text("-") for _ in columns))
        tables.append(table)
    return tables


# --------------------------------------------------------------------------- charts (SVG)

# Colour-blind-friendly categorical palette (Okabe-Ito), then greys.
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#000000",
    "#999999",
)
_MAX_HOURLY_BARS = 14 * 24  # beyond two weeks, bars are per day so each stays visible


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _nice_ceiling(value: float, steps: Sequence[float] = (1, 2, 2.5, 5)) -> float:
    """The smallest step x 10^k at or above value (axis maximum or tick step)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (*steps, 10):
        if step * power >= value * (1 - 1e-9):
            return step * power
    return 10 * power


def _count_axis_max(value: float) -> float:
    """An axis maximum whose four ticks are whole numbers: 4 x (1, 2 or 5 x 10^k)."""
    return 4 * max(1.0, _nice_ceiling(value / 4, (1, 2, 5)))


def _svg_open(width: int, height: int, label: str) -> str:
    return (
        f'<svg viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="{_esc(label)}" class="chart">'
    )


def _svg_empty(width: int, height: int, label: str, message: str) -> str:
    return (
        _svg_open(width, height, label)
        + f'<rect x="0" y="0" width="{width}" height="{height}" class="plot-bg"/>'
        + f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="empty">'
        + f"{_esc(message)}</text></svg>"
    )


def _y_axis(
    left: float, top: float, plot_w: float, plot_h: float, ymax: float, fmt: Callable[[float], str]
) -> list[str]:
    parts = []
    for k in range(5):
        value = ymax * k / 4
        y = top + plot_h - plot_h * k / 4
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
            f"{_esc(fmt(value))}</text>"
        )
    return parts


def _x_label(t: float, bucket: int) -> str:
    return time.strftime("%m-%d %H:00" if bucket < DAY else "%Y-%m-%d", time.gmtime(t))


def svg_sends_chart(sends: Mapping[str, Any], width: int = 1040, height: int = 300) -> str:
    """Stacked bars: accepted messages per hour (or per day past two weeks) by provider."""
    label = "Messages accepted per hour by provider"
    points = sends["points"]
    if not points:
        return _svg_empty(width, height, label, "nothing sent yet")
    bucket = int(sends["bucket_seconds"])
    first = min(p["t"] for p in points)
    last = max(p["t"] for p in points)
    if (last - first) / bucket >= _MAX_HOURLY_BARS:
        bucket = DAY
    first -= first % bucket
    last -= last % bucket
    providers = list(sends["providers"])
    slots = int((last - first) // bucket) + 1
    stacks: list[dict[str, int]] = [{} for _ in range(slots)]
    for p in points:
        slot = int((p["t"] - p["t"] % bucket - first) // bucket)
        stacks[slot][p["provider"]] = stacks[slot].get(p["provider"], 0) + p["sent"]
    ymax = _count_axis_max(max(sum(s.values()) for s in stacks))
    left, right, top, bottom = 64.0, 16.0, 14.0, 46.0
    plot_w, plot_h = width - left - right, height - top - bottom
    slot_w = plot_w / slots
    bar_w = max(1.0, slot_w * 0.8)
    parts = [_svg_open(width, height, label)]
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="plot-bg"/>')
    parts += _y_axis(left, top, plot_w, plot_h, ymax, lambda v: f"{v:,.0f}")
    unit = "hour" if bucket == HOUR else "day"
    for i, stack in enumerate(stacks):
        x = left + i * slot_w + (slot_w - bar_w) / 2
        base = top + plot_h
        when = _x_label(first + i * bucket, bucket)
        for j, provider in enumerate(providers):
            n = stack.get(provider, 0)
            if not n:
                continue
            h = plot_h * n / ymax
            base -= h
            parts.append(
                f'<rect x="{x:.2f}" y="{base:.2f}" width="{bar_w:.2f}" height="{h:.2f}" '
                f'fill="{PALETTE[j % len(PALETTE)]}"><title>{_esc(provider or "(none)")}: '
                f"{n:,} accepted, {_esc(when)} UTC ({unit})</title></rect>"
            )
    step = max(1, math.ceil(slots / 10))
    for i in range(0, slots, step):
        x = left + (i + 0.5) * slot_w
        parts.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 18}" text-anchor="middle" class="tick">'
            f"{_esc(_x_label(first + i * bucket, bucket))}</text>"
        )
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle" class="axis">'
        f"UTC, one bar per {unit}</text></svg>"
    )
    return "".join(parts)


def svg_rate_chart(
    rates: Mapping[str, Any],
    kind: str,
    threshold: float,
    colour: str,
    width: int = 510,
    height: int = 240,
) -> str:
    """A line of the bounce or complaint rate per period, with the breaker as a dashed line."""
    label = f"{kind.capitalize()} rate over time"
    key = f"{kind}_rate"
    count_key = "bounced_hard" if kind == "bounce" else "complaints"
    points = [p for p in rates["points"] if p[key] is not None]
    if not points:
        return _svg_empty(width, height, label, "no answers yet")
    bucket = int(rates["bucket_seconds"])
    ymax = 4 * _nice_ceiling(max(max(p[key] for p in points), threshold) * 1.1 / 4, (1, 2, 5))
    left, right, top, bottom = 58.0, 14.0, 14.0, 40.0
    plot_w, plot_h = width - left - right, height - top - bottom
    first, last = points[0]["t"], points[-1]["t"]
    span = max(last - first, 1)

    def x_of(t: float) -> float:
        if last == first:
            return left + plot_w / 2
        return left + plot_w * (t - first) / span

    def y_of(rate: float) -> float:
        return top + plot_h - plot_h * rate / ymax

    parts = [_svg_open(width, height, label)]
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="plot-bg"/>')
    parts += _y_axis(left, top, plot_w, plot_h, ymax, lambda v: f"{v * 100:.3g}%")
    ty = y_of(threshold)
    parts.append(
        f'<line x1="{left}" y1="{ty:.1f}" x2="{left + plot_w}" y2="{ty:.1f}" class="threshold"/>'
        f'<text x="{left + plot_w - 4}" y="{ty - 5:.1f}" text-anchor="end" class="threshold-label">'
        f"breaker {threshold * 100:g}%</text>"
    )
    coords = [(x_of(p["t"]), y_of(p[key])) for p in points]
    if len(coords) > 1:
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
    for p, (x, y) in zip(points, coords, strict=True):
        over = ' class="over" r="4.5"' if p[key] > threshold else ' r="3"'
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}"{over} fill="{colour}">'
            f"<title>{_esc(_x_label(p['t'], bucket))} UTC: {p[key] * 100:.2f}% "
            f"({p[count_key]:,} of {p['answered']:,})</title></circle>"
        )
    labels = {0, len(points) - 1} | set(range(0, len(points), max(1, math.ceil(len(points) / 5))))
    for i in sorted(labels):
        if i == len(points) - 1 and i and coords[i][0] - coords[max(labels - {i})][0] < 90:
            continue  # the last label would overlap its neighbour
        # Labels at the plot's edges grow inwards so that none is cut off.
        anchor = "middle" if len(points) == 1 else "start" if i == 0 else "end"
        if 0 < i < len(points) - 1:
            anchor = "middle"
        parts.append(
            f'<text x="{coords[i][0]:.1f}" y="{top + plot_h + 18}" text-anchor="{anchor}" '
            f'class="tick">{_esc(_x_label(points[i]["t"], bucket))}</text>'
        )
    unit = "hour" if bucket == HOUR else "day"
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle" class="axis">'
        f"UTC, per {unit} the messages were sent</text></svg>"
    )
    return "".join(parts)


# --------------------------------------------------------------------------- HTML


_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; padding: 28px 36px 48px; background: #f5f6f8; color: #1d2330;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
header { display: flex; justify-content: space-between; align-items: baseline;
  flex-wrap: wrap; gap: 8px; margin-bottom: 18px; }
h1 { font-size: 24px; margin: 0; }
h2 { font-size: 16px; margin: 0 0 10px; }
.meta { color: #5b6475; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr));
  gap: 12px; margin-bottom: 18px; }
.card { background: #fff; border: 1px solid #dde1e8; border-radius: 8px; padding: 12px 14px; }
.card .label { color: #5b6475; font-size: 12px; text-transform: uppercase;
  letter-spacing: .04em; }
.card .value { font-size: 22px; font-weight: 600; margin-top: 2px;
  font-variant-numeric: tabular-nums; }
.card .sub { color: #5b6475; font-size: 12px; }
.card.alert { border-color: #d1242f; background: #fff5f5; }
.card.alert .value { color: #d1242f; }
section { background: #fff; border: 1px solid #dde1e8; border-radius: 8px; padding: 16px 18px;
  margin-bottom: 18px; overflow-x: auto; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
.pair section { margin-bottom: 0; }
.legend { display: flex; flex-wrap: wrap; gap: 14px; margin: 4px 0 8px; color: #39414f; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
  margin-right: 6px; vertical-align: -1px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 10px; border-bottom: 1px solid #eceff3; text-align: left;
  vertical-align: top; }
th { font-size: 12px; color: #5b6475; font-weight: 600; border-bottom: 1px solid #cfd5de; }
th.num { text-align: right; }
td.num { text-align: right; white-space: nowrap; }
td.text { white-space: nowrap; }
td.wrap { min-width: 150px; overflow-wrap: anywhere; }
tr:last-child td { border-bottom: none; }
td.alert { color: #d1242f; font-weight: 600; }
td.none { color: #8a92a0; text-align: center; }
.kv { columns: 3 300px; column-gap: 36px; }
.kv div { display: flex; justify-content: space-between; gap: 16px; padding: 4px 0;
  border-bottom: 1px solid #eceff3; break-inside: avoid; }
.kv .k { color: #5b6475; white-space: nowrap; }
.kv .v { text-align: right; font-variant-numeric: tabular-nums; }
.kv .v.alert { color: #d1242f; font-weight: 600; }
svg.chart { display: block; max-width: 100%; height: auto; }
svg .plot-bg { fill: #fbfcfd; }
svg .grid { stroke: #e3e7ed; stroke-width: 1; }
svg .tick { fill: #5b6475; font-size: 11px; }
svg .axis { fill: #5b6475; font-size: 11px; }
svg .empty { fill: #8a92a0; font-size: 14px; }
svg .threshold { stroke: #d1242f; stroke-width: 1.5; stroke-dasharray: 6 4; }
svg .threshold-label { fill: #d1242f; font-size: 11px; }
svg circle.over { stroke: #d1242f; stroke-width: 2; }
footer { color: #8a92a0; font-size: 12px; }
@media (max-width: 900px) { .pair { grid-template-columns: 1fr; } }
"""

# Nothing may be fetched, whatever a reply text or campaign name contains.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _html_table(columns: Sequence[Column], rows: Sequence[Any]) -> str:
    def kind(c: Column) -> str:
        return "num" if c.numeric else "wrap" if c.wrap else "text"

    head = "".join(f'<th class="{kind(c)}">{_esc(c.header)}</th>' for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            classes = [kind(c)]
            if c.alert and c.alert(row):
                classes.append("alert")
            cells.append(f'<td class="{" ".join(classes)}">{_esc(c.value(row))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    if not rows:
        body.append(f'<tr><td class="none" colspan="{len(columns)}">none</td></tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _card(label: str, value: str, sub: str = "", alert: bool = False) -> str:
    return (
        f'<div class="card{" alert" if alert else ""}"><div class="label">{_esc(label)}</div>'
        f'<div class="value">{_esc(value)}</div><div class="sub">{_esc(sub)}</div></div>'
    )


def _cards(stats: Mapping[str, Any]) -> str:
    counts, rates, delivery = stats["counts"], stats["rates"], stats["delivery_seconds"]
    bounce, complaint = rates["bounce"], rates["complaint"]
    cards = [
        _card("Sent", f"{counts['sent']:,}", f"of {counts['total']:,} messages"),
        _card("Remaining", f"{counts['remaining']:,}", f"{counts['deferred']:,} deferred"),
        _card(
            "Bounce rate",
            format_rate(bounce).rstrip(" !"),
            f"{bounce['count']:,} of {bounce['of']:,}; breaker {bounce['threshold'] * 100:g}%",
            bool(bounce["exceeded"]),
        ),
        _card(
            "Complaint rate",
            format_rate(complaint).rstrip(" !"),
            f"{complaint['count']:,} of {complaint['of']:,}; "
            f"breaker {complaint['threshold'] * 100:g}%",
            bool(complaint["exceeded"]),
        ),
        _card(
            "Delivery p50",
            format_duration(delivery["p50"]),
            f"p90 {format_duration(delivery['p90'])}, p99 {format_duration(delivery['p99'])}",
        ),
        _card(
            "Failed / expired",
            f"{counts['failed']:,} / {counts['expired']:,}",
            f"{counts['suppressed']:,} suppressed",
        ),
    ]
    return '<div class="cards">' + "".join(cards) + "</div>"


def _kv(rows: Iterable[tuple[str, str, bool]]) -> str:
    items = "".join(
        f'<div><span class="k">{_esc(label)}</span>'
        f'<span class="v{" alert" if alert else ""}">{_esc(value)}</span></div>'
        for label, value, alert in rows
    )
    return f'<div class="kv">{items}</div>'


def render_html(report: Mapping[str, Any]) -> str:
    """One self-contained page: summary, charts (inline SVG), tables. Every datum is escaped."""
    heading = _heading(report)
    series = report["series"]
    thresholds = report["thresholds"]
    providers = series["sends"]["providers"]
    legend = "".join(
        f'<span><span class="swatch" style="background:{PALETTE[i % len(PALETTE)]}"></span>'
        f"{_esc(p or '(none)')}</span>"
        for i, p in enumerate(providers)
    )
    details: list[tuple[str, str, bool]] = []
    if report["campaign"] is not None and report["campaigns"]:
        campaign = report["campaigns"][0]
        for key in ("status", "stop_reason", "profile", "traffic_class", "pool", "list"):
            if campaign[key] is not None:
                details.append((key.replace("_", " "), str(campaign[key]), False))
        details.append(("created", format_time(campaign["created_at"]) + " UTC", False))
    details += _summary_rows(report["totals"])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_esc(_CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>mailctl report: {_esc(heading)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<header><h1>mailctl report: {_esc(heading)}</h1>",
        f'<div class="meta">generated {_esc(format_time(report["generated_at"]))} UTC</div>'
        "</header>",
        _cards(report["totals"]),
        "<section><h2>Messages accepted per hour, by provider</h2>",
        f'<div class="legend">{legend}</div>',
        svg_sends_chart(series["sends"]),
        "</section>",
        '<div class="pair">',
        "<section><h2>Bounce rate over time</h2>",
        svg_rate_chart(series["rates"], "bounce", thresholds["bounce_rate"], "#D55E00"),
        "</section>",
        "<section><h2>Complaint rate over time</h2>",
        svg_rate_chart(series["rates"], "complaint", thresholds["complaint_rate"], "#CC79A7"),
        "</section></div>",
        '<div style="height:18px"></div>',
        f"<section><h2>Summary</h2>{_kv(details)}</section>",
    ]
    for title, columns, rows in _sections(report):
        parts.append(f"<section><h2>{_esc(title)}</h2>{_html_table(columns, rows)}</section>")
    parts.append(
        f"<footer>mailctl report schema {report['schema_version']}. Rates are hard bounces and "
        "complaints over messages a receiver answered; \u201c!\u201d marks a rate above its "
        "circuit breaker.</footer></body></html>"
    )
    return "\n".join(parts)
