"""The report as Rich tables for the terminal, built from the report's data.

Only builds renderables: the CLI prints them. Must not import cli, delivery or bounces.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table
from rich.text import Text

from mailctl.report.columns import report_title, sections, summary_rows, unsubscribe_rows
from mailctl.untrusted import printable


def render_tables(report: Mapping[str, Any]) -> list[Table]:
    """Rich tables for the terminal, in reading order. Data cells are `Text`, never markup:
    reply texts such as ``[TSS04]`` must print as they are."""
    summary = Table(
        title=Text(printable(report_title(report))), show_header=False, title_justify="left"
    )
    summary.add_column("what", style="bold")
    summary.add_column("value")
    if report["campaign"] is not None and report["campaigns"]:
        campaign = report["campaigns"][0]
        for key in ("status", "stop_reason", "profile", "traffic_class", "pool", "list"):
            if campaign[key] is not None:
                summary.add_row(key.replace("_", " "), Text(printable(campaign[key])))
    for label, value, alert in summary_rows(report["totals"]):
        summary.add_row(label, Text(value, style="bold red" if alert else ""))
    for label, value, alert in unsubscribe_rows(report):
        summary.add_row(label, Text(value, style="bold red" if alert else ""))
    bounce_reports = report.get("bounce_reports") or {}
    if bounce_reports.get("unmatched"):
        summary.add_row(
            "unmatched reports",
            Text(
                f"{bounce_reports['unmatched']} of {bounce_reports['reports']} "
                "(tied to no message sent; not suppressed)"
            ),
        )
    tables = [summary]
    for title, columns, rows in sections(report):
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
                        printable(column.value(row), 1000),
                        style="bold red" if column.alert and column.alert(row) else "",
                    )
                    for column in columns
                )
            )
        if not rows:
            table.add_row(*(Text("-") for _ in columns))
        tables.append(table)
    return tables
