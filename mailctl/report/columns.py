"""What the report's tables show: cell formatting and columns, shared by both views.

The terminal tables (`mailctl.report.tables`) and the HTML page (`mailctl.report.html`)
lay out the same sections with the same columns from the report's data
(`mailctl.report.data`). Nothing here prints. Must not import cli, delivery or bounces.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mailctl.report.data import STATES


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

WAIT_COLUMNS = (
    Column("count", lambda r: f"{r['count']:,}"),
    Column("reason", lambda r: r["reason"], numeric=False, wrap=True),
)


def unsubscribe_rows(report: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """The summary's unsubscribes line (none when there were none)."""
    counts = report.get("unsubscribes") or {}
    if not counts.get("total"):
        return []
    return [
        (
            "unsubscribes",
            f"{counts['total']} (one-click {counts['one_click']}, confirm page "
            f"{counts['web_confirm']}, mail {counts['mail']})",
            False,
        )
    ]


def summary_rows(stats: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
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


def report_title(report: Mapping[str, Any]) -> str:
    return f"Campaign {report['campaign']}" if report["campaign"] else "All campaigns"


def sections(report: Mapping[str, Any]) -> list[tuple[str, Sequence[Column], list[Any]]]:
    """The tables after the summary, in order: (title, columns, rows)."""
    sections: list[tuple[str, Sequence[Column], list[Any]]] = []
    if report["campaign"] is None:
        sections.append(("Campaigns, newest first", CAMPAIGN_COLUMNS, report["campaigns"]))
    sections.append(("Top replies", REPLY_COLUMNS, report["totals"]["top_replies"]))
    if report["deferral_reasons"]:
        sections.append(("Why deferred messages wait", WAIT_COLUMNS, report["deferral_reasons"]))
    sections.append(("By sending IP", _lane_columns("ip"), report["by_ip"]))
    sections.append(("By provider", _lane_columns("provider"), report["by_provider"]))
    if report["lanes"]:
        sections.append(("Lanes not at normal speed", LANE_COLUMNS, report["lanes"]))
    return sections
