"""`mailctl queue`: what waits, per campaign x lane (or domain) x reason; retry-now; drop.

The command group only parses, calls `mailctl.delivery.queue` and formats.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from mailctl.cli import console
from mailctl.store.base import QueueGroup

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

queue_app = typer.Typer(
    help=(
        "The queue: without a command, waiting messages per campaign x lane (or domain) x "
        "reason, with how many, the oldest and the next attempt; retry now or drop by hand."
        "\n\nExample: mailctl queue --by domain --campaign november"
    ),
    context_settings=CONTEXT,
    invoke_without_command=True,
)

CampaignOpt = Annotated[str | None, typer.Option("--campaign", help="Only this campaign.")]
DomainOpt = Annotated[str | None, typer.Option("--domain", help="Only this recipient domain.")]
ProviderOpt = Annotated[
    str | None, typer.Option("--provider", help="Only this provider (lane group), e.g. google.")
]
AddressOpt = Annotated[str | None, typer.Option("--address", help="Only this address (any case).")]
ReasonOpt = Annotated[
    str | None, typer.Option("--reason", help="Only reasons containing this text, e.g. warm-up.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _query(
    campaign: str | None,
    domain: str | None,
    provider: str | None,
    address: str | None,
    reason: str | None,
) -> Any:
    from mailctl.delivery.queue import QueueQuery

    return QueueQuery(campaign, domain, provider, address, reason)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _open() -> Any:
    from mailctl.cli import _open_store

    return _open_store()


@queue_app.callback()
def queue_summary(
    ctx: typer.Context,
    by: Annotated[
        str, typer.Option("--by", help="Group by lane (IP -> provider) or domain.")
    ] = "lane",
    campaign: CampaignOpt = None,
    domain: DomainOpt = None,
    provider: ProviderOpt = None,
    address: AddressOpt = None,
    reason: ReasonOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Summarise the queue: waiting messages per campaign x lane (or domain) x reason, with
    how many, the oldest and the next attempt.

    Example: mailctl queue --by domain --campaign november
    """
    if ctx.invoked_subcommand is not None:
        return
    from mailctl.delivery.queue import summary
    from mailctl.errors import UsageError

    if by not in ("lane", "domain"):
        raise UsageError(f"--by must be lane or domain, not '{by}'")
    group: QueueGroup = "domain" if by == "domain" else "lane"
    with _open() as store:
        rows = summary(store, _query(campaign, domain, provider, address, reason), group)
    if json_output:
        console.emit_json({"by": by, "waiting": sum(r["count"] for r in rows), "groups": rows})
        return
    if not rows:
        console.out.print("the queue is empty")
        return
    table = Table("campaign", by, "reason", "count", "oldest", "next attempt", title="Queue")
    for row in rows:
        table.add_row(
            row["campaign"],
            row[by] or "",
            row["kind"],
            str(row["count"]),
            _when(row["oldest"]),
            _when(row["next_attempt_at"]),
        )
    console.out.print(table)
    console.info(f"{sum(r['count'] for r in rows)} messages wait")


@queue_app.command("list")
def queue_list(
    campaign: CampaignOpt = None,
    domain: DomainOpt = None,
    provider: ProviderOpt = None,
    address: AddressOpt = None,
    reason: ReasonOpt = None,
    limit: Annotated[int, typer.Option(help="Show at most this many.", min=1)] = 50,
    json_output: JsonOpt = False,
) -> None:
    """List waiting messages, the next due first, each with why it waits.

    Example: mailctl queue list --provider google --reason 421 --limit 20
    """
    from mailctl.delivery.queue import waiting

    with _open() as store:
        rows = waiting(store, _query(campaign, domain, provider, address, reason), limit)
    if json_output:
        for row in rows:
            console.emit_json_line(row)
        return
    table = Table("id", "campaign", "address", "lane", "attempts", "next attempt", "reason")
    for row in rows:
        lane = f"{row['ip'] or '-'} -> {row['provider'] or '-'}"
        table.add_row(
            str(row["id"]),
            row["campaign"],
            row["email"],
            lane,
            str(row["attempts"]),
            _when(row["next_attempt_at"]),
            row["reason"] or row["kind"],
        )
    console.out.print(table)


@queue_app.command("retry")
def queue_retry(
    campaign: CampaignOpt = None,
    domain: DomainOpt = None,
    provider: ProviderOpt = None,
    address: AddressOpt = None,
    reason: ReasonOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Make matching deferred messages due now; the next `send` tries them (lane pauses and
    warm-up caps still apply).

    Example: mailctl queue retry --domain example.com
    """
    from mailctl.delivery.queue import retry_now

    with _open() as store:
        count = retry_now(store, _query(campaign, domain, provider, address, reason), time.time())
    if json_output:
        console.emit_json({"retried": count})
    else:
        console.info(f"{count} deferred messages are due now")


@queue_app.command("drop")
def queue_drop(
    campaign: CampaignOpt = None,
    domain: DomainOpt = None,
    provider: ProviderOpt = None,
    address: AddressOpt = None,
    reason: ReasonOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Drop matching waiting messages by hand: they become cancelled and are never sent.
    Needs --campaign, --domain, --provider or --address.

    Example: mailctl queue drop --domain example.com --campaign november
    """
    from mailctl.delivery.queue import drop

    with _open() as store:
        count = drop(store, _query(campaign, domain, provider, address, reason), time.time())
    if json_output:
        console.emit_json({"dropped": count})
    else:
        console.info(f"{count} waiting messages dropped by hand")
