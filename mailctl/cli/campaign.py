"""`mailctl campaign`: list, show, pause, resume and cancel campaigns.

Part of the CLI: parses, calls `mailctl.delivery.campaign_status` and the store, formats.
Must not be imported by anything outside mailctl/cli.
"""

from __future__ import annotations

import time

import typer
from rich.table import Table

from mailctl.cli import console
from mailctl.cli.context import open_store
from mailctl.cli.options import CONTEXT, CampaignName, JsonOption
from mailctl.delivery.campaign_status import (
    CANCEL,
    PAUSE,
    RESUME,
    StatusAction,
    campaign_row,
    change_status,
)
from mailctl.delivery.campaigns import requeue_sender_faults

app = typer.Typer(help="Inspect and control campaigns.", context_settings=CONTEXT)


@app.command("list")
def campaign_list(
    json_output: JsonOption = False,
) -> None:
    """List campaigns, newest first, with their message counts.

    Example: mailctl campaign list
    """
    with open_store() as store:
        rows = []
        for row in store.list_campaigns():
            counts = store.message_counts(row["id"])
            rows.append(
                {
                    "name": row["name"],
                    "status": row["status"],
                    "class": row["traffic_class"],
                    "stop_reason": row["stop_reason"],
                    **counts,
                }
            )
    if json_output:
        console.emit_json(rows)
        return
    table = Table(
        "name", "status", "class", "queued", "sent", "deferred", "bounced", "failed", "suppressed"
    )
    for r in rows:
        table.add_row(
            r["name"],
            r["status"],
            r["class"],
            str(r["queued"]),
            str(r["sent"]),
            str(r["deferred"]),
            str(r["bounced"]),
            str(r["failed"]),
            str(r["suppressed"]),
        )
    console.out.print(table)


@app.command("show")
def campaign_show(
    name: CampaignName,
    json_output: JsonOption = False,
) -> None:
    """Show one campaign: status, why it stopped, counts and the top replies.

    Example: mailctl campaign show welcome
    """
    with open_store() as store:
        row = campaign_row(store, name)
        counts = store.message_counts(row["id"])
        replies = store.top_replies(row["id"])
        waits = store.top_wait_kinds(row["id"], 10)
    data = {
        "name": row["name"],
        "status": row["status"],
        "stop_reason": row["stop_reason"],
        "profile": row["profile"],
        "class": row["traffic_class"],
        "pool": row["pool"],
        "list": row["list_name"],
        "file": row["path"],
        "content_version": row["content_version"],
        "counts": counts,
        "top_replies": [{"reply": t, "count": n} for t, n in replies],
        "deferral_reasons": [{"reason": k, "count": n} for k, n in waits],
    }
    if json_output:
        console.emit_json(data)
        return
    table = Table(title=f"Campaign {name}", show_header=False)
    for key in ("status", "stop_reason", "profile", "class", "pool", "list", "file"):
        if data[key] is not None:
            table.add_row(key.replace("_", " "), str(data[key]))
    for key, value in counts.items():
        table.add_row(key.replace("_", " "), str(value))
    console.out.print(table)
    if replies:
        top = Table("count", "reply", title="Top replies")
        for text, count in replies:
            top.add_row(str(count), text or "")
        console.out.print(top)
    if waits:
        why = Table("count", "reason", title="Why deferred messages wait")
        for kind, count in waits:
            why.add_row(str(count), kind)
        console.out.print(why)


def _set_status(name: str, action: StatusAction) -> None:
    with open_store() as store:
        cancelled = change_status(store, name, action)
    extra = "" if cancelled is None else f"; {cancelled} unsent messages cancelled"
    console.info(f"campaign {name}: {action.status}{extra}")


@app.command("pause")
def campaign_pause(name: CampaignName) -> None:
    """Pause a campaign: `send --all` skips it until it is resumed.

    Example: mailctl campaign pause welcome
    """
    _set_status(name, PAUSE)


@app.command("resume")
def campaign_resume(name: CampaignName) -> None:
    """Resume a paused campaign, or one a circuit breaker stopped (deliberately).

    Messages that failed because of the sending side (the relay refused the credentials,
    TLS, the relay unreachable) are queued again: fix the cause first.

    Example: mailctl campaign resume welcome
    """
    _set_status(name, RESUME)
    with open_store() as store:
        requeued = requeue_sender_faults(store, campaign_row(store, name)["id"], time.time())
    if requeued:
        console.info(f"{requeued} messages that failed on the sending side are queued again")


@app.command("cancel")
def campaign_cancel(name: CampaignName) -> None:
    """Cancel a campaign for good: its unsent messages are never sent.

    Example: mailctl campaign cancel welcome
    """
    _set_status(name, CANCEL)
