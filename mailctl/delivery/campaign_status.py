"""Campaign status changed by hand (pause, resume, cancel): which status each action sets,
from which statuses it is allowed, and what cancelling does to unsent mail.

Domain code for `mailctl campaign`; never prints. Must not import typer, rich or mailctl.cli.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailctl.errors import MailctlError
from mailctl.store.base import Store


@dataclass(frozen=True)
class StatusAction:
    verb: str
    status: str
    allowed_from: tuple[str, ...]


PAUSE = StatusAction("pause", "paused", ("active", "done"))
# Resuming also restarts a campaign a circuit breaker stopped: a deliberate act.
RESUME = StatusAction("resume", "active", ("paused", "stopped", "active"))
CANCEL = StatusAction("cancel", "cancelled", ("active", "paused", "stopped", "done"))


def campaign_row(store: Store, name: str) -> dict[str, Any]:
    """The stored campaign called `name`; an error naming the command that lists them."""
    row = store.get_campaign(name)
    if row is None:
        raise MailctlError(f"no campaign named '{name}' (see `mailctl campaign list`)")
    return row


def change_status(store: Store, name: str, action: StatusAction) -> int | None:
    """Apply `action` to campaign `name`; returns how many unsent messages a cancel
    cancelled (None for the other actions)."""
    row = campaign_row(store, name)
    if row["status"] not in action.allowed_from:
        raise MailctlError(f"campaign '{name}' is {row['status']}; cannot {action.verb} it")
    why = f"{action.status} by hand" if action.status != "active" else None
    store.set_campaign_status(row["id"], action.status, why)
    if action is CANCEL:
        return store.cancel_unsent(row["id"])
    return None
