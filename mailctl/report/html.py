"""The report as one self-contained HTML page: summary cards, SVG charts, tables.

Built from the report's data (`mailctl.report.data`); returns text, the CLI writes it.
Must not import cli, delivery or bounces.

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
from typing import Any

from mailctl.report.columns import (
    Column,
    format_duration,
    format_rate,
    format_time,
    report_title,
    sections,
    summary_rows,
    unsubscribe_rows,
)
from mailctl.report.data import DAY, HOUR

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
    heading = report_title(report)
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
    details += summary_rows(report["totals"])
    details += unsubscribe_rows(report)
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
    for title, columns, rows in sections(report):
        parts.append(f"<section><h2>{_esc(title)}</h2>{_html_table(columns, rows)}</section>")
    parts.append(
        f"<footer>mailctl report schema {report['schema_version']}. Rates are hard bounces and "
        "complaints over messages a receiver answered; \u201c!\u201d marks a rate above its "
        "circuit breaker.</footer></body></html>"
    )
    return "\n".join(parts)
