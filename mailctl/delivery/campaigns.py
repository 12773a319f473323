"""Campaign life cycle: register a campaign file in the store, queue it, resume it safely."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailctl.config.campaign import Campaign, load_campaign
from mailctl.config.profiles import Profile, ProfilesFile, TrafficClass
from mailctl.delivery.context import CampaignJob
from mailctl.errors import (
    CampaignChangedError,
    ConfigError,
    InputError,
    MailctlError,
    TemplateError,
)
from mailctl.message.dkim import DkimKeyConfig
from mailctl.message.render import LinkSigning, Renderer
from mailctl.message.tracking import tracking_keys
from mailctl.recipients.csv_import import ImportSummary, import_csv_if_changed
from mailctl.store.base import Store, StoredKey
from mailctl.unsubscribe.tokens import load_secret, stored_secret


def content_hash(content: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


@dataclass
class Prepared:
    job: CampaignJob
    imported: ImportSummary | None
    queued: int
    suppressed: int
    updated_messages: int = 0


def check_fields(store: Store, renderer: Renderer, list_name: str) -> None:
    """A template field some recipient lacks is an error before sending starts."""
    for name in sorted(renderer.required_fields):
        row = store.recipient_missing_field(list_name, name)
        if row is not None:
            raise TemplateError(
                f"{renderer.campaign.path}: the template uses '{name}' but recipient {row} "
                f"(list {list_name}) has no such field"
            )


def csv_size(campaign_path: Path) -> int | None:
    """The size in bytes of a campaign's CSV, for the loading estimate; None without a CSV or
    when it cannot be read (loading the campaign for real reports the problem)."""
    try:
        campaign = load_campaign(campaign_path)
        return campaign.csv.path.stat().st_size if campaign.csv is not None else None
    except (MailctlError, OSError):
        return None


def _signing_key(profile: Profile, from_address: str) -> DkimKeyConfig | None:
    """The profile's DKIM key for this From; the key loader (with the DNS checks beside it,
    a heavy import) is loaded only when the profile signs at all."""
    if not profile.dkim:
        return None
    from mailctl.dns.preflight import signing_key

    return signing_key(profile, from_address)


def make_renderer(
    campaign: Campaign,
    profiles: ProfilesFile,
    database: str | Path | None = None,
    *,
    preview: bool = False,
    stored: StoredKey | None = None,
) -> Renderer:
    """The campaign's renderer; `database` is where a generated unsubscribe key lives (or
    `stored`, the store's `database_key`, when the database keeps it itself). A
    `preview` (dry run) without a database signs links with a throwaway key: it creates
    nothing."""
    profile = profiles.get(campaign.profile, need_password=False)  # rendering never connects
    base_url = None if campaign.unsubscribe_url else profile.unsubscribe.base_url
    if (
        campaign.traffic_class is TrafficClass.MARKETING
        and campaign.unsubscribe_url is None
        and campaign.unsubscribe_mailto is None
        and base_url is None
    ):
        raise ConfigError(
            f"{campaign.path}: a marketing campaign needs 'unsubscribe' (url and/or mailto), "
            f"or profile '{profile.name}' an unsubscribe.base_url (Gmail and Yahoo require "
            "one-click unsubscribe for bulk mail)",
            file=str(campaign.path),
            key="unsubscribe",
        )
    return Renderer(
        campaign,
        bounce_domain=profile.bounce_domain,
        verp=profile.verp,
        dkim=_signing_key(profile, campaign.from_addr),
        unsubscribe=link_signing(campaign, profile, database, preview=preview, stored=stored),
        unsubscribe_base_url=base_url,
    )


def link_signing(
    campaign: Campaign,
    profile: Profile,
    database: str | Path | None,
    *,
    preview: bool = False,
    stored: StoredKey | None = None,
) -> LinkSigning | None:
    """Signed unsubscribe links for campaigns that have an unsubscribe URL or mailto."""
    if (
        campaign.unsubscribe_url is None
        and campaign.unsubscribe_mailto is None
        and profile.unsubscribe.base_url is None
    ):
        return None
    location = None
    if database is not None and "://" not in str(database) and str(database) != ":memory:":
        location = Path(database)
    settings = profile.unsubscribe
    if settings.secret_env is None and location is None:
        shared = stored_secret(stored)
        if shared is not None:
            return LinkSigning(shared, campaign.list_key, settings.valid_for)
        if preview:
            return LinkSigning(os.urandom(32), campaign.list_key, settings.valid_for)
        return None  # nowhere to keep a key (a scratch database): links stay unsigned
    return LinkSigning(
        secret=load_secret(settings.secret_env, location, stored),
        list_name=campaign.list_key,
        valid_for=settings.valid_for,
    )


def prepare(
    store: Store,
    campaign_path: Path,
    profiles: ProfilesFile,
    *,
    update: bool = False,
    now: float,
    on_progress: Any = None,
    before_import: Callable[[Campaign, Profile, str], None] | None = None,
) -> Prepared:
    """Load a campaign file, import its CSV, register or resume it, queue new recipients.
    ``before_import`` gets the campaign, its profile and pool once they are known."""
    campaign = load_campaign(campaign_path)
    profile = profiles.get(campaign.profile)
    pool = profile.pool_for(campaign.traffic_class, campaign.pool)
    if before_import is not None:
        before_import(campaign, profile, pool)
    renderer = make_renderer(campaign, profiles, store.location, stored=store.database_key)
    imported = None
    if campaign.csv is not None:
        source = campaign.csv
        imported = import_csv_if_changed(
            store,
            source.path,
            list_name=campaign.list_key,
            email_column=source.email_column,
            delimiter=source.delimiter,
            encoding=source.encoding,
            on_progress=on_progress,
        )
    elif not store.list_exists(campaign.list_key):
        raise InputError(
            f"{campaign_path}: no recipient list '{campaign.list_key}' "
            "(import one with `mailctl recipients import FILE --list NAME`)"
        )
    check_fields(store, renderer, campaign.list_key)
    content = campaign.content()
    digest = content_hash(content)
    row = store.get_campaign(campaign.name)
    updated_messages = 0
    if row is None:
        campaign_id = store.create_campaign(
            name=campaign.name,
            path=str(campaign_path),
            profile=profile.name,
            traffic_class=campaign.traffic_class.value,
            pool=pool,
            list_name=campaign.list_key,
            content=content,
            content_hash=digest,
            now=now,
        )
    else:
        campaign_id = row["id"]
        if row["status"] == "cancelled":
            raise MailctlError(f"campaign '{campaign.name}' was cancelled; it cannot be resumed")
        if row["list_name"] != campaign.list_key:
            raise CampaignChangedError(
                f"campaign '{campaign.name}' sends to list '{row['list_name']}', the file now "
                f"says '{campaign.list_key}'; use a new campaign name"
            )
        if row["content_hash"] != digest:
            changed = describe_changes(row["content"], content)
            if not update:
                raise CampaignChangedError(
                    f"campaign '{campaign.name}' changed since it started ({', '.join(changed)}); "
                    "run with --update to apply the change to unsent messages"
                )
            updated_messages = store.update_campaign(
                campaign_id,
                content=content,
                content_hash=digest,
                path=str(campaign_path),
                profile=profile.name,
                traffic_class=campaign.traffic_class.value,
                pool=pool,
                now=now,
            )
        if row["status"] == "done":
            store.set_campaign_status(campaign_id, "active", None, now=now)
    # Signed ids: a report can name a message only with an id this database's key made.
    keys = tracking_keys(store.location, profile.tracking_key_env, stored=store.database_key)
    queued, suppressed = store.queue_messages(campaign_id, campaign.list_key, now, keys.new_id)
    job = CampaignJob(
        campaign_id=campaign_id,
        campaign=campaign,
        profile=profile,
        pool=pool,
        renderer=renderer,
        transactional=campaign.traffic_class is TrafficClass.TRANSACTIONAL,
    )
    return Prepared(job, imported, queued, suppressed, updated_messages)


def active_jobs(
    store: Store, profiles: ProfilesFile, *, now: float
) -> tuple[list[Prepared], list[str]]:
    """Every active campaign, reloaded from its file (the cron form, `send --all`).

    A campaign that cannot be loaded (file gone or broken, content changed without
    --update) is left out and named in the second list, so it never holds up the others.
    """
    prepared, problems = [], []
    for row in store.list_campaigns(["active"]):
        path = Path(row["path"])
        if not path.exists():
            problems.append(
                f"campaign '{row['name']}': its file {path} is gone; pause or cancel the campaign"
            )
            continue
        try:
            prepared.append(prepare(store, path, profiles, now=now))
        except MailctlError as exc:
            problems.append(f"campaign '{row['name']}' skipped: {exc}")
    return prepared, problems


def requeue_sender_faults(store: Store, campaign_id: int, now: float) -> int:
    """On resume: messages that failed because of the sending side (credentials refused,
    TLS, the relay unreachable) go back to the queue. The operator fixed the cause; those
    messages never reached anyone, so leaving them failed would lose them."""
    from mailctl.delivery.outcome import SENDER_FAULT_REASONS
    from mailctl.delivery.transport import SenderFault

    failed = sorted(SENDER_FAULT_REASONS.values())
    expired = sorted(SENDER_FAULT_REASONS[fault] for fault in (SenderFault.AUTH, SenderFault.TLS))
    return store.requeue_failed(campaign_id, failed, expired, now)
