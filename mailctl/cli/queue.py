"""`mailctl queue`: what waits, per campaign x lane (or domain) x reason; retry-now; drop.

The command group only parses, calls `mailctl.delivery.queue` and formats.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from typing import Annotated, Any

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

# The filters every queue command takes, written once: `with_filters` gives a command these
# options, in this order, where its `query` parameter stands, and hands it one `QueueQuery`.
FILTERS: dict[str, Any] = {
    "campaign": Annotated[str | None, typer.Option("--campaign", help="Only this campaign.")],
    "domain": Annotated[str | None, typer.Option("--domain", help="Only this recipient domain.")],
    "provider": Annotated[
        str | None,
        typer.Option("--provider", help="Only this provider (lane group), e.g. google."),
    ],
    "address": Annotated[
        str | None, typer.Option("--address", help="Only this address (any case).")
    ],
    "reason": Annotated[
        str | None,
        typer.Option("--reason", help="Only reasons containing this text, e.g. warm-up."),
    ],
}
NO_FILTER = QueueQuery()  # a command's `query` default (the filters always give one)


def with_filters(command: Callable[..., None]) -> Callable[..., None]:
    """The command with the `FILTERS` options in place of its `query: QueueQuery` parameter
    (Typer reads the options from the signature; the command receives the query)."""
    signature = inspect.signature(command, eval_str=True)
    params = list(signature.parameters.values())
    at = [p.name for p in params].index("query")
    filters = [
        inspect.Parameter(name, params[at].kind, default=None, annotation=alias)
        for name, alias in FILTERS.items()
    ]

    @functools.wraps(command)
    def run_with_query(**options: Any) -> None:
        query = QueueQuery(**{name: options.pop(name) for name in FILTERS})
        command(**options, query=query)

    run_with_query.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*params[:at], *filters, *params[at + 1 :]]
    )
    return run_with_query


@app.callback()
@with_filters
def queue_summary(
    ctx: typer.Context,
    by: Annotated[
        str, typer.Option("--by", help="Group by lane (IP -> provider) or domain.")
    ] = "lane",
    query: QueueQuery = NO_FILTER,
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
        rows = summary(store, query, group)
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
@with_filters
def queue_list(
    query: QueueQuery = NO_FILTER,
    limit: Annotated[int, typer.Option(help="Show at most this many.", min=1)] = 50,
    json_output: JsonOption = False,
) -> None:
    """List waiting messages, the next due first, each with why it waits.

    Example: mailctl queue list --provider google --reason 421 --limit 20
    """

    with open_store() as store:
        rows = waiting(store, query, limit)
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
@with_filters
def queue_retry(
    query: QueueQuery = NO_FILTER,
    json_output: JsonOption = False,
) -> None:
    """Make matching deferred messages due now; the next `send` tries them (lane pauses and
    warm-up caps still apply).

    Example: mailctl queue retry --domain example.com
    """

    with open_store() as store:
        count = retry_now(store, query, time.time())
    if json_output:
        console.emit_json({"retried": count})
    else:
        console.info(f"{count} deferred messages are due now")


@app.command("drop")
@with_filters
def queue_drop(
    query: QueueQuery = NO_FILTER,
    json_output: JsonOption = False,
) -> None:
    """Drop matching waiting messages by hand: they become cancelled and are never sent.
    Needs --campaign, --domain, --provider or --address.

    Example: mailctl queue drop --domain example.com --campaign november
    """

    with open_store() as store:
        count = drop(store, query, time.time())
    if json_output:
        console.emit_json({"dropped": count})
    else:
        console.info(f"{count} waiting messages dropped by hand")
