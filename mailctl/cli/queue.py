"""`mailctl queue`: what waits, per campaign x lane (or domain) x reason; retry-now; drop.

The command group only parses, calls `mailctl.delivery.queue` and formats.
"""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from mailctl.cli import console
from mailctl.cli.context import open_store, when
from mailctl.cli.options import CONTEXT, JsonOption
from mailctl.delivery.queue import QueueQuery, drop, retry_now, summary, waiting
from mailctl.errors import UsageError
from mailctl.store.base import QueueGroup

app = typer.Typer(
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


def _query(
    campaign: str | None,
    domain: str | None,
    provider: str | None,
    address: str | None,
    reason: str | None,
) -> QueueQuery:
    return QueueQuery(campaign, domain, provider, address, reason)


@app.callback()
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
    json_output: JsonOption = False,
) -> None:
    """Summarise the queue: waiting messages per campaign x lane (or domain) x reason, with
    how many, the oldest and the next attempt.

    Example: mailctl queue --by domain --campaign november
    """
    if ctx.invoked_subcommand is not None:
        return

    if by not in ("lane", "domain"):
        raise UsageError(f"--by must be lane or domain, not '{by}'")
    group: QueueGroup = "domain" if by == "domain" else "lane"
    with open_store() as store:
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
            when(row["oldest"]),
            when(row["next_attempt_at"]),
        )
    console.out.print(table)
    console.info(f"{sum(r['count'] for r in rows)} messages wait")


@app.command("list")
def queue_list(
    campaign: CampaignOpt = None,
    domain: DomainOpt = None,
    provider: ProviderOpt = None,
    address: AddressOpt = None,
    reason: ReasonOpt = None,
    limit: Annotated[int, typer.Option(help="Show at most this many.", min=1)] = 50,
    json_output: JsonOption = False,
) -> None:
    """List waiting messages, the next due first, each with why it waits.

    Example: mailctl queue list --provider google --reason 421 --limit 20
    """

    with open_store() as store:
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
            when(row["next_attempt_at"]),
            row["reason"] or row["kind"],
        )
    console.out.print(table)


@app.command("retry")
def queue_retry(
    campaign: CampaignOpt = None,
    domain: DomainOpt = None,
    provider: ProviderOpt = None,
    address: AddressOpt = None,
    reason: ReasonOpt = None,
    json_output: JsonOption = False,
) -> None:
    """Make matching deferred messages due now; the next `send` tries them (lane pauses and
    warm-up caps still apply).

    Example: mailctl queue retry --domain example.com
    """

    with open_store() as store:
        count = retry_now(store, _query(campaign, domain, provider, address, reason), time.time())
    if json_output:
        console.emit_json({"retried": count})
    else:
        console.info(f"{count} deferred messages are due now")


@app.command("drop")
def queue_drop(
    campaign: CampaignOpt = None,
    domain: DomainOpt = None,
    provider: ProviderOpt = None,
    address: AddressOpt = None,
    reason: ReasonOpt = None,
    json_output: JsonOption = False,
) -> None:
    """Drop matching waiting messages by hand: they become cancelled and are never sent.
    Needs --campaign, --domain, --provider or --address.

    Example: mailctl queue drop --domain example.com --campaign november
    """

    with open_store() as store:
        count = drop(store, _query(campaign, domain, provider, address, reason), time.time())
    if json_output:
        console.emit_json({"dropped": count})
    else:
        console.info(f"{count} waiting messages dropped by hand")
