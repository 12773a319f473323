"""The report's data: what happened to the mail, aggregated from the store as plain data.

`build_report` returns the JSON of `mailctl report --json`; the terminal tables
(`mailctl.report.tables`) and the HTML page (`mailctl.report.html`) only format it, so all
three views always agree. Nothing here prints. Must not import cli, delivery or bounces.

JSON schema (``schema_version`` 1)
----------------------------------

Every time (``*_at``, ``t``) is in seconds since the epoch, UTC. Every duration is in
seconds. Rates are fractions (0.02 = 2 %), ``null`` when nothing was answered yet. Lists are
always present (possibly empty); keys are never left out.

::

    {
      "schema_version": 1,
      "generated_at": 1800000000.0,
      "campaign": "november" | null,      # the campaign asked for; null: all campaigns
      "thresholds": {"bounce_rate": 0.02, "complaint_rate": 0.003},   # circuit breakers
      "totals": Stats,                    # over the selected campaign(s)
      "unsubscribes": {"one_click", "web_confirm", "mail", "total": int},  # by channel;
                                          # of the campaign (by its links), else all
      "campaigns": [Campaign, ...],       # newest first; one entry when a campaign is named
      "by_ip": [Lane-group, ...],         # per sending IP, sorted by IP
      "by_provider": [Lane-group, ...],   # per mailbox provider, sorted by name
      "lanes": [LanePause, ...],          # every IP x provider lane not at normal speed now
      "deferral_reasons": [{"reason": str, "count": int}, ...],  # why deferred messages
                                          # wait now, most common first (<= 10)
      "bounce_reports": {"reports": int, "unmatched": int},  # imported reports naming
                                          # recipients; unmatched: tied to no sent message
                                          # (recorded, never suppressing by default); all
                                          # campaigns, reports being about mail, not a campaign
      "series": Series                    # for charts, over the selected campaign(s)
    }

    Campaign = Stats + {"name", "status", "stop_reason", "profile", "traffic_class", "pool",
                        "list", "created_at", "updated_at"}

    Stats = {
      "counts": Counts,
      "rates": {"bounce": Rate, "complaint": Rate},
      "delivery_seconds": {"count": int, "p50", "p90", "p99", "max": float | null},
      "top_replies": [{"code": int | null, "text": str | null, "count": int}, ...]  # <= 10
    }

    Counts = {
      # messages by state (these partition "total"):
      "total", "queued", "sending", "sent", "deferred", "bounced", "complained", "failed",
      "expired", "suppressed", "cancelled",
      "remaining",      # queued + deferred + sending: still to be tried
      "answered",       # a receiver gave a final answer: sent, bounced, complained or failed
                        # after an attempt (the rates' denominator, as for the breaker)
      "bounced_hard",   # state bounced, or an imported bounce report says permanent failure
                        # (a block reported by DSN leaves the message failed and counts here)
      "bounced_soft"    # an imported bounce report says temporary failure, not also hard
                        # (such a message may be in state sent: its relay accepted it)
    }

    Rate = {"count": int, "of": int, "rate": float | null, "threshold": float,
            "exceeded": bool}    # exceeded: rate strictly above threshold (exact decimals)
                                 # bounce count = bounced_hard; complaint count = messages
                                 # in state complained or named by a complaint report

    Lane-group = {
      "ip": str | "provider": str,        # the key of the group
      "counts": Counts, "rates": {"bounce": Rate, "complaint": Rate},
      "throttles": int,                   # replies whose scope is the lane (throttles, blocks)
      "throttle_reasons": [{"rule", "reason", "count", "first_at", "last_at"}, ...],
      "pauses": int,                      # times a lane was paused (suspended, slowed,
                                          # disabled, backed off) while sending these
      "pause_events": [{"ip", "provider", "kind", "rule", "count", "last_at", "last_until",
                        "reason"}, ...],  # per lane, kind and rule; reason: the last one's
      "lane_pauses": [LanePause, ...],    # this IP's or provider's lanes not at normal speed
      "warmup": null | {...}              # by_ip only: the IP's warm-up stage (filled by warmup)
    }

    LanePause = {"ip", "provider", "mode", "until": float | null, "reason", "rule",
                 "active": bool}          # active: until is null or still in the future

    Series = {
      "sends": {"bucket_seconds": 3600, "providers": [str, ...],
                "points": [{"t", "provider", "sent"}, ...]},       # accepted, by sent_at
      "rates": {"bucket_seconds": 3600 | 86400,   # hours when the answers span <= 48 h
                "points": [{"t", "answered", "bounced_hard", "complaints",
                            "bounce_rate", "complaint_rate"}, ...]}
    }

A message's lane (``ip``, ``provider``) is the one of its last attempt; messages never
attempted (queued, suppressed) belong to no lane and appear in ``by_ip``/``by_provider`` of
no one. Throttle events are counted per lane that answered. Bounces and complaints that arrive
later, by report, count in the period the message was sent in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from functools import lru_cache
from typing import Any

from mailctl.config.provider_rules import Scope, shipped_rules
from mailctl.errors import MailctlError
from mailctl.replies.classify import REASON_SCOPE, RULES
from mailctl.store.base import MESSAGE_STATES, ReportGroup, Store

SCHEMA_VERSION = 1
HOUR = 3600
DAY = 86400
TOP_REPLIES = 10

# Message states, in the order people read them (the store's order).
STATES = MESSAGE_STATES
_REMAINING = ("queued", "deferred", "sending")
_ANSWERED = ("sent", "bounced", "complained", "failed")


# --------------------------------------------------------------------------- throttles


def is_throttle(scope: str | None, rule: str | None, reason: str | None) -> bool:
    """Whether a stored reply was about the lane (IP x provider): a throttle or a block.

    The engine stores the scope it decided. Replies recorded before the store kept it
    (schema version 5) have none: their scope is read back from rule id and reason.
    """
    if scope is not None:
        return scope == Scope.LANE.value
    return throttle_by_rule(rule, reason)


@lru_cache(maxsize=1)
def _lane_rule_ids() -> frozenset[str]:
    """Rule ids that are about the lane: the classifier's, and the lane rules' that act on it."""
    ids = {rule.id for rule in RULES if rule.scope is Scope.LANE}
    ids |= {rule.id for rule in shipped_rules() if rule.action.affects_lane}
    return frozenset(ids)


@lru_cache(maxsize=1)
def _classifier_rule_ids() -> frozenset[str]:
    return frozenset(rule.id for rule in RULES)


def throttle_by_rule(rule: str | None, reason: str | None) -> bool:
    """Whether a reply stored without its scope was about the lane, read back from the
    classifier's rule id and reason.

    A rule re-read at an SMTP stage ends in ``@stage`` (only ``@connect`` makes it the
    lane's), a text rule has its own scope, and status/class rules take the reason's scope
    (``class.421`` -> toomanyconn -> lane).
    """
    if not rule:
        return False
    base, _, stage = rule.rpartition("@") if "@" in rule else (rule, "", "")
    if stage:
        return stage == "connect"
    if base in _lane_rule_ids():
        return True
    if base in _classifier_rule_ids():
        return False
    return REASON_SCOPE.get(reason or "") is Scope.LANE


# --------------------------------------------------------------------------- building


def _counts(states: Mapping[str, Mapping[str, int]] | None) -> dict[str, int]:
    states = states or {}

    def messages(state: str) -> int:
        return states.get(state, {}).get("messages", 0)

    counts = {"total": sum(v.get("messages", 0) for v in states.values())}
    counts.update({state: messages(state) for state in STATES})
    counts["remaining"] = sum(messages(s) for s in _REMAINING)
    counts["answered"] = sum(states.get(s, {}).get("attempted", 0) for s in _ANSWERED)
    counts["bounced_hard"] = messages("bounced") + sum(
        v.get("hard", 0) for s, v in states.items() if s != "bounced"
    )
    counts["bounced_soft"] = sum(v.get("soft", 0) for s, v in states.items() if s != "bounced")
    return counts


def _complaints(states: Mapping[str, Mapping[str, int]] | None) -> int:
    states = states or {}
    return states.get("complained", {}).get("messages", 0) + sum(
        v.get("complaint", 0) for s, v in states.items() if s != "complained"
    )


def _rate(count: int, of: int, threshold: float) -> dict[str, Any]:
    # Compared as exact decimals, like the breaker: 4 of 200 is exactly 2 %, not above it.
    exceeded = of > 0 and Fraction(count, of) > Fraction(repr(threshold))
    return {
        "count": count,
        "of": of,
        "rate": count / of if of else None,
        "threshold": threshold,
        "exceeded": exceeded,
    }


def _rates(
    states: Mapping[str, Mapping[str, int]] | None,
    counts: Mapping[str, int],
    breakers: Sequence[float],
) -> dict[str, Any]:
    return {
        "bounce": _rate(counts["bounced_hard"], counts["answered"], breakers[0]),
        "complaint": _rate(_complaints(states), counts["answered"], breakers[1]),
    }


def _delivery(entry: Mapping[str, Any] | None) -> dict[str, Any]:
    entry = entry or {}
    return {
        "count": entry.get("count", 0),
        "p50": entry.get("p50"),
        "p90": entry.get("p90"),
        "p99": entry.get("p99"),
        "max": entry.get("max"),
    }


def _stats(
    key: Any,
    counts_by: Mapping[Any, Any],
    delivery_by: Mapping[Any, Any],
    replies_by: Mapping[Any, Any],
    breakers: Sequence[float],
) -> dict[str, Any]:
    states = counts_by.get(key)
    counts = _counts(states)
    return {
        "counts": counts,
        "rates": _rates(states, counts, breakers),
        "delivery_seconds": _delivery(delivery_by.get(key)),
        "top_replies": list(replies_by.get(key, [])),
    }


def _throttles(rows: Iterable[Mapping[str, Any]]) -> dict[Any, dict[str, Any]]:
    """key -> {throttles, throttle_reasons} from replies counted per rule."""
    result: dict[Any, dict[str, Any]] = {}
    for row in rows:
        if row["key"] is None or not is_throttle(row["scope"], row["rule"], row["reason"]):
            continue
        entry = result.setdefault(row["key"], {"throttles": 0, "reasons": {}})
        entry["throttles"] += row["count"]
        reason = entry["reasons"].setdefault(
            (row["rule"], row["reason"]),
            {
                "rule": row["rule"],
                "reason": row["reason"],
                "count": 0,
                "first_at": row["first_at"],
                "last_at": row["last_at"],
            },
        )
        reason["count"] += row["count"]
        reason["first_at"] = min(reason["first_at"], row["first_at"])
        reason["last_at"] = max(reason["last_at"], row["last_at"])
    for entry in result.values():
        entry["throttle_reasons"] = sorted(
            entry.pop("reasons").values(), key=lambda r: (-r["count"], r["rule"] or "")
        )
    return result


def _lane_groups(
    store: Store,
    group: ReportGroup,
    campaign_id: int | None,
    lanes: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    breakers: Sequence[float],
) -> list[dict[str, Any]]:
    reports = store.reports
    counts_by = reports.message_counts(group, campaign_id)
    throttles_by = _throttles(reports.reply_rules(group, campaign_id))
    keys = sorted(
        {k for k in counts_by if k is not None}
        | set(throttles_by)
        | {e[group] for e in events if e[group] is not None}
    )
    result = []
    for key in keys:
        states = counts_by.get(key)
        counts = _counts(states)
        throttles = throttles_by.get(key, {})
        entry: dict[str, Any] = {
            group: key,
            "counts": counts,
            "rates": _rates(states, counts, breakers),
            "throttles": throttles.get("throttles", 0),
            "throttle_reasons": throttles.get("throttle_reasons", []),
            "pauses": sum(e["count"] for e in events if e[group] == key),
            "pause_events": [dict(e) for e in events if e[group] == key],
            "lane_pauses": [dict(lane) for lane in lanes if lane[group] == key],
        }
        if group == "ip":
            entry["warmup"] = None  # filled by the warm-up layer
        result.append(entry)
    return result


# How each unsubscribe arrived, by the prefix of its source.
_UNSUBSCRIBE_CHANNELS = {"one-click": "one_click", "web-confirm": "web_confirm", "mail": "mail"}


def unsubscribe_counts(sources: list[str], campaign: str | None) -> dict[str, int]:
    """Unsubscribes by channel (one-click POST, confirm page, mail); of one campaign when
    named (mail ones tied to it by their token), else all, including untied mail ones."""
    counts = dict.fromkeys((*_UNSUBSCRIBE_CHANNELS.values(), "total"), 0)
    for source in sources:
        prefix, _, rest = source.partition(":")
        channel = _UNSUBSCRIBE_CHANNELS.get(prefix, "mail")
        if campaign is not None and (channel == "mail" and prefix != "mail" or rest != campaign):
            continue
        counts[channel] += 1
        counts["total"] += 1
    return counts


def build_report(
    store: Store,
    campaign: str | None,
    *,
    now: float,
    breakers: tuple[float, float] = (0.02, 0.003),
) -> dict[str, Any]:
    """The report of one campaign (by name) or of all campaigns; see the module docstring.

    `breakers` are the (bounce, complaint) rate thresholds to compare against.
    """
    reports = store.reports
    campaigns = reports.campaigns(campaign)
    if campaign is not None and not campaigns:
        raise MailctlError(f"no campaign named '{campaign}' (see `mailctl campaign list`)")
    campaign_id = campaigns[0]["id"] if campaign is not None else None

    counts_by = reports.message_counts("campaign", campaign_id)
    delivery_by = reports.delivery_times("campaign", campaign_id)
    replies_by = reports.top_replies("campaign", campaign_id, TOP_REPLIES)
    entries = []
    for row in campaigns:
        entries.append(
            {
                "name": row["name"],
                "status": row["status"],
                "stop_reason": row["stop_reason"],
                "profile": row["profile"],
                "traffic_class": row["traffic_class"],
                "pool": row["pool"],
                "list": row["list_name"],
                "created_at": row["created_at"],
                "updated_at": row["updated_at"],
                **_stats(row["id"], counts_by, delivery_by, replies_by, breakers),
            }
        )
    totals = _stats(
        None,
        reports.message_counts("all", campaign_id),
        reports.delivery_times("all", campaign_id),
        reports.top_replies("all", campaign_id, TOP_REPLIES),
        breakers,
    )

    lanes = [
        {**lane, "active": lane["until"] is None or lane["until"] > now}
        for lane in reports.lane_rows()
    ]
    events = reports.lane_events(campaign_id)
    sends = reports.sends_per_bucket(campaign_id, HOUR)
    first, last = reports.answer_span(campaign_id)
    rate_bucket = HOUR if first is None or last is None or last - first <= 2 * DAY else DAY
    rate_points = []
    for point in reports.rates_per_bucket(campaign_id, rate_bucket):
        answered = point["answered"]
        rate_points.append(
            {
                **point,
                "bounce_rate": point["bounced_hard"] / answered if answered else None,
                "complaint_rate": point["complaints"] / answered if answered else None,
            }
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": now,
        "campaign": campaign,
        "thresholds": {"bounce_rate": breakers[0], "complaint_rate": breakers[1]},
        "totals": totals,
        "unsubscribes": unsubscribe_counts(reports.unsubscribe_sources(), campaign),
        "campaigns": entries,
        "by_ip": _lane_groups(store, "ip", campaign_id, lanes, events, breakers),
        "by_provider": _lane_groups(store, "provider", campaign_id, lanes, events, breakers),
        "lanes": lanes,
        "deferral_reasons": [
            {"reason": kind, "count": count}
            for kind, count in store.top_wait_kinds(campaign_id, TOP_REPLIES)
        ],
        "bounce_reports": reports.report_counts(),
        "series": {
            "sends": {
                "bucket_seconds": HOUR,
                "providers": sorted({p["provider"] for p in sends}),
                "points": sends,
            },
            "rates": {"bucket_seconds": rate_bucket, "points": rate_points},
        },
    }
