"""Before a campaign's first real send: the dry run (render the first messages, change
nothing) and the decision whether the DNS preflight is due, and its report.

Returns data and reports through callbacks; never prints. Must not import typer, rich or
mailctl.cli.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mailctl.config.campaign import load_campaign
from mailctl.config.profiles import ProfilesFile, TransportKind
from mailctl.delivery.campaigns import check_fields, make_renderer
from mailctl.dns.checks import CheckReport
from mailctl.dns.preflight import check as run_check
from mailctl.dns.preflight import resolver_for
from mailctl.message.render import RenderedMessage
from mailctl.message.tracking import new_tracking_id
from mailctl.recipients.csv_import import import_csv
from mailctl.store.base import Store


@dataclass(frozen=True)
class DryRun:
    """What `send --dry-run` found: the campaign, its recipient count, the first messages."""

    campaign: str
    total: int
    messages: list[RenderedMessage]


def dry_run(
    campaign_file: Path,
    profiles: ProfilesFile,
    *,
    scratch_store: Callable[[], Store],
    existing_store: Callable[[str], Store],
    show: int,
    on_warning: Callable[[str], None],
) -> DryRun:
    """Render the first `show` messages without touching the database or the network.

    A campaign with a CSV is imported into a scratch store (`scratch_store()`); one naming
    a stored list reads it from `existing_store(list_name)`, which never writes."""
    campaign = load_campaign(campaign_file)
    profiles.get(campaign.profile)
    renderer = make_renderer(campaign, profiles)
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
        total = source.count_recipients(campaign.list_key)
        messages = [
            renderer.render(row["email"], row["fields"], new_tracking_id())
            for row in source.iter_recipients(campaign.list_key, limit=show)
        ]
    return DryRun(campaign=campaign.name, total=total, messages=messages)


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
    return campaign.name, run_check(resolver_for(zones), profile, campaign, fast=True)
