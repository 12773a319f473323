"""Before a campaign's first real send: the dry run (render the first messages, change
nothing) and the decision whether the DNS preflight is due, and its report.

Returns data and reports through callbacks; never prints. Must not import typer, rich or
mailctl.cli.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mailctl.config.campaign import load_campaign
from mailctl.config.profiles import ProfilesFile, TransportKind
from mailctl.delivery.campaigns import check_fields, make_renderer
from mailctl.message.render import RenderedMessage
from mailctl.message.tracking import new_tracking_id
from mailctl.recipients.address import address_key
from mailctl.recipients.csv_import import import_csv
from mailctl.store.base import Store

if TYPE_CHECKING:
    from mailctl.dns.checks import CheckReport


@dataclass(frozen=True)
class DryRun:
    """What `send --dry-run` found: the campaign, its recipient count, the first messages."""

    campaign: str
    total: int  # recipients a real run would queue now (none already queued or sent)
    messages: list[RenderedMessage]
    already: int = 0  # list members that already have a message in this campaign


def dry_run(
    campaign_file: Path,
    profiles: ProfilesFile,
    *,
    scratch_store: Callable[[], Store],
    existing_store: Callable[[str], Store],
    show: int,
    on_warning: Callable[[str], None],
    database: str | Path | None = None,
    known_keys: Callable[[str], set[str]] = lambda name: set(),
) -> DryRun:
    """Render the first `show` messages without touching the database or the network.

    A campaign with a CSV is imported into a scratch store (`scratch_store()`); one naming
    a stored list reads it from `existing_store(list_name)`, which never writes. Unsubscribe
    links are signed with the key next to `database` when it exists (so a preview shows
    links that work), else with a throwaway key: a dry run creates no key file.
    `known_keys(campaign)` gives the address keys that already have a message in the real
    database: a real run queues only the others, so they are not counted (nor shown)."""
    campaign = load_campaign(campaign_file)
    profiles.get(campaign.profile, need_password=False)  # a dry run never connects
    renderer = make_renderer(campaign, profiles, database, preview=True)
    with scratch_store() as scratch:
        if campaign.csv is not None:
            summary = import_csv(
                scratch,
                campaign.csv.path,
                list_name=campaign.list_key,
                email_column=campaign.csv.email_column,
                delimiter=campaign.csv.delimiter,
                encoding=campaign.csv.encoding,
            )
            if summary.invalid:
                on_warning(f"{summary.invalid} rows of {campaign.csv.path} would be rejected")
            source = scratch
        else:
            source = existing_store(campaign.list_key)
        check_fields(source, renderer, campaign.list_key)
        known = known_keys(campaign.name)
        total = already = 0
        messages: list[RenderedMessage] = []
        for row in source.iter_recipients(campaign.list_key):
            if address_key(row["email"]) in known:
                already += 1
                continue
            total += 1
            if len(messages) < show:
                messages.append(renderer.render(row["email"], row["fields"], new_tracking_id()))
    return DryRun(campaign=campaign.name, total=total, messages=messages, already=already)


def first_send_preflight(
    open_store: Callable[[], Store],
    campaign_file: Path,
    profiles: ProfilesFile,
    zones: Sequence[Path],
) -> tuple[str, CheckReport] | None:
    """The fast DNS checks when a campaign is about to send for the first time over a relay
    or direct (None when they are not due); returns the campaign's name and the report.

    The store is opened (by `open_store`) only when the checks could be due, to see whether
    the campaign has started already, and closed before any DNS query."""
    campaign = load_campaign(campaign_file)
    profile = profiles.get(campaign.profile)
    if profile.transport is TransportKind.SANDBOX or not profile.preflight:
        return None
    if not profile.dns and not zones:
        return None  # a profile with DNS off (rehearsal): check zones with `mailctl check --zone`
    with open_store() as store:
        if store.get_campaign(campaign.name) is not None:
            return None  # checked when it started
    # Imported here, not at the top: the DNS checks (SPF, DKIM, DMARC, host checks) are a
    # heavy import, and only a campaign's first send over a relay or direct needs them; cron
    # runs `send` every few minutes.
    from mailctl.dns.preflight import check, resolver_for

    return campaign.name, check(resolver_for(zones), profile, campaign, fast=True)
