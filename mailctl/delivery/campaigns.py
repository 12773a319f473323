"""Campaign life cycle: register a campaign file in the store, queue it, resume it safely."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailctl.config.campaign import Campaign, load_campaign
from mailctl.config.profiles import ProfilesFile, TrafficClass
from mailctl.delivery.context import CampaignJob
from mailctl.errors import CampaignChangedError, InputError, MailctlError, TemplateError
from mailctl.message.render import Renderer
from mailctl.message.tracking import tracking_keys
from mailctl.recipients.csv_import import ImportSummary, import_csv
from mailctl.store.base import Store


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


def make_renderer(campaign: Campaign, profiles: ProfilesFile) -> Renderer:
    from mailctl.dns.preflight import signing_key

    profile = profiles.get(campaign.profile)
    return Renderer(
        campaign,
        bounce_domain=profile.bounce_domain,
        verp=profile.verp,
        dkim=signing_key(profile, campaign.from_addr),
    )


def prepare(
    store: Store,
    campaign_path: Path,
    profiles: ProfilesFile,
    *,
    update: bool = False,
    now: float,
    on_progress: Any = None,
) -> Prepared:
    """Load a campaign file, import its CSV, register or resume it, queue new recipients."""
    campaign = load_campaign(campaign_path)
    profile = profiles.get(campaign.profile)
    pool = profile.pool_for(campaign.traffic_class, campaign.pool)
    renderer = make_renderer(campaign, profiles)
    imported = None
    if campaign.csv is not None:
        source = campaign.csv
        imported = import_csv(
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
    keys = tracking_keys(store.location, profile.tracking_key_env)
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
