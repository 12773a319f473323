"""The provider rules format: lane limits and reply rules, shipped and overridden per profile.

The shipped table is ``mailctl/data/provider_rules.yaml`` (its header documents the format); it
is the one table of provider replies, read both by the classifier (each rule's ``scope``,
``reason``, ``permanent``, ``suppress``) and by the lanes (``action``, durations, limits,
trigger). A profile overrides it under ``rules:`` with the same shape, lane keys only;
`resolve_rules` validates and merges the two:

* ``limits.<provider>``: the given keys replace the shipped ones; keys left out come from the
  shipped entry, then from ``default``. A new provider name adds a lane profile.
* ``replies``: an entry whose ``id`` names a shipped rule changes only the keys it gives
  (``enabled: false`` drops the rule); an entry with a new ``id`` is a new rule and needs
  ``match`` and ``action``. New rules are checked before the shipped ones, so a profile's own
  rule wins.

A profile's rules decide what happens to a *lane* (and, for ``stop_campaign``, to the
campaign); whether a recipient is suppressed is the shipped table's and the classifier's
decision alone, so a profile cannot set ``scope``, ``reason``, ``permanent`` or ``suppress``.

Part of config, the bottom of the domain layer: imports mailctl.errors and config only.
`mailctl.replies.rules` turns the result into a `RuleSet`; `mailctl.replies.classify` reads the
shipped rules' verdicts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Any

import yaml

from mailctl.config.nodes import parse_duration, unknown_key_message
from mailctl.errors import ConfigError

__all__ = [
    "Action",
    "Amount",
    "LaneLimits",
    "LimitChange",
    "ReplyRule",
    "Scope",
    "TlsPolicy",
    "Trigger",
    "resolve_rules",
    "shipped_rules",
]


class Scope(StrEnum):
    """Whom a reply is about, which decides the action."""

    RECIPIENT = "recipient"  # this address: suppress when hard, count when soft
    LANE = "lane"  # this sending IP towards this provider: slow down or pause
    CAMPAIGN = "campaign"  # the content or the sending domain: stop, never suppress
    TRANSIENT = "transient"  # nothing to learn: retry the message later
    MESSAGE = "message"  # this message's own content (line too long): fail it, nothing else


DATA_FILE = "provider_rules.yaml"


class TlsPolicy(StrEnum):
    OPPORTUNISTIC = "opportunistic"  # STARTTLS when offered
    REQUIRED = "required"  # no STARTTLS, no delivery
    NONE = "none"


class Action(StrEnum):
    SUSPEND = "suspend"
    SET_LIMITS = "set_limits"
    DISABLE_IP = "disable_ip"
    STOP_CAMPAIGN = "stop_campaign"
    DEFER_RECIPIENT = "defer_recipient"
    BOUNCE_RECIPIENT = "bounce_recipient"

    @property
    def scopes(self) -> frozenset[Scope]:
        """The classifier scopes this action is consistent with."""
        return _ACTION_SCOPES[self]

    @property
    def affects_lane(self) -> bool:
        return self in (Action.SUSPEND, Action.SET_LIMITS, Action.DISABLE_IP)


_ACTION_SCOPES: Mapping[Action, frozenset[Scope]] = {
    Action.SUSPEND: frozenset({Scope.LANE}),
    # "campaign/lane -> slow down" (Gmail's UnsolicitedMessageError) slows the lane.
    Action.SET_LIMITS: frozenset({Scope.LANE, Scope.CAMPAIGN}),
    Action.DISABLE_IP: frozenset({Scope.LANE}),
    Action.STOP_CAMPAIGN: frozenset({Scope.CAMPAIGN}),
    Action.DEFER_RECIPIENT: frozenset({Scope.RECIPIENT, Scope.TRANSIENT}),
    Action.BOUNCE_RECIPIENT: frozenset({Scope.RECIPIENT}),
}


@dataclass(frozen=True)
class LaneLimits:
    """What one lane (sending IP -> provider) may do. Rates are messages per window."""

    connections: int
    messages_per_connection: int
    per_minute: float | None
    per_hour: float | None
    per_day: float | None
    burst: int
    tls: TlsPolicy = TlsPolicy.OPPORTUNISTIC

    def as_dict(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "messages_per_connection": self.messages_per_connection,
            "per_minute": self.per_minute,
            "per_hour": self.per_hour,
            "per_day": self.per_day,
            "burst": self.burst,
            "tls": self.tls.value,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LaneLimits:
        return cls(
            connections=int(data["connections"]),
            messages_per_connection=int(data["messages_per_connection"]),
            per_minute=_opt_float(data.get("per_minute")),
            per_hour=_opt_float(data.get("per_hour")),
            per_day=_opt_float(data.get("per_day")),
            burst=int(data["burst"]),
            tls=TlsPolicy(data.get("tls", TlsPolicy.OPPORTUNISTIC.value)),
        )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class Amount:
    """A new value for one limit: absolute, or a fraction of the limit in force ("50%")."""

    value: float
    relative: bool = False

    def apply(self, current: float | None) -> float | None:
        if not self.relative:
            return self.value
        return None if current is None else current * self.value

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g}"


_CHANGE_FIELDS = ("connections", "messages_per_connection", "per_minute", "per_hour", "per_day")


@dataclass(frozen=True)
class LimitChange:
    """The limits a ``set_limits`` rule imposes; None keeps the limit in force."""

    connections: Amount | None = None
    messages_per_connection: Amount | None = None
    per_minute: Amount | None = None
    per_hour: Amount | None = None
    per_day: Amount | None = None

    def apply(self, limits: LaneLimits) -> LaneLimits:
        """The limits after the change. Never raises a limit: a rule only ever slows down."""
        values: dict[str, Any] = {}
        for name in _CHANGE_FIELDS:
            amount: Amount | None = getattr(self, name)
            current = getattr(limits, name)
            if amount is None:
                continue
            new = amount.apply(current)
            if new is None:
                continue
            if current is not None:
                new = min(new, current)
            if name in ("connections", "messages_per_connection"):
                new = max(1, int(new))
            values[name] = new
        return replace(limits, **values)

    @property
    def adaptive(self) -> bool:
        """Shares ("50%") of the per-minute rate and/or the connections only: the lane applies
        them to what it observed (reputation/aimd.py). An absolute number is one the provider
        documents, and caps the lane as given."""
        given = [
            amount
            for amount in (self.per_minute, self.per_hour, self.per_day, self.connections)
            if amount is not None
        ]
        return (
            bool(given)
            and all(amount.relative for amount in given)
            and self.per_hour is None
            and self.per_day is None
        )

    @property
    def lowers_pace(self) -> bool:
        """Whether it touches rate or connections (not only messages per connection)."""
        return any(
            getattr(self, name) is not None
            for name in ("connections", "per_minute", "per_hour", "per_day")
        )


@dataclass(frozen=True)
class Trigger:
    """Act on the ``count``-th match within ``window`` seconds."""

    count: int
    window: float


@dataclass(frozen=True)
class ReplyRule:
    """One row of the provider rules table: a regex over the one-line reply, and what it means."""

    id: str
    pattern: re.Pattern[str]
    action: Action
    providers: tuple[str, ...] = ()  # empty: every provider
    duration: float | None = None
    pause: float | None = None  # set_limits only: suspend this long first, then slow
    limits: LimitChange | None = None
    trigger: Trigger | None = None
    alert: bool = False
    example: str | None = None
    # What the reply means, for the classifier. Every shipped rule has a scope and a reason;
    # a profile's own rules have neither (they only act on lanes).
    scope: Scope | None = None
    reason: str | None = None  # Sisimai's vocabulary: userunknown, blocked, speeding ...
    permanent: bool | None = None  # None: from the reply's class (4xx/5xx)
    suppress: bool = False  # only ever for a permanent failure of the recipient's own

    def applies_to(self, provider: str | None) -> bool:
        return not self.providers or provider is None or provider in self.providers


# --------------------------------------------------------------------------------------------
# Loading and validation


_LIMIT_KEYS = {
    "connections",
    "messages_per_connection",
    "per_minute",
    "per_hour",
    "per_day",
    "burst",
    "tls",
}
_RULE_KEYS = {
    "id",
    "match",
    "provider",
    "action",
    "duration",
    "pause",
    "limits",
    "trigger",
    "alert",
    "example",
    "enabled",
}
# What a rule means to the classifier: the shipped table only, never a profile.
_VERDICT_KEYS = {"scope", "reason", "permanent", "suppress"}
_SHIPPED_RULE_KEYS = (_RULE_KEYS - {"enabled"}) | _VERDICT_KEYS


def _fail(path: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}", key=path)


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return repr(value)


def _mapping(value: Any, path: str, allowed: set[str] | None = None) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, f"expected a mapping, got {_describe(value)}")
    for key in value:
        if not isinstance(key, str):
            raise _fail(path, f"keys must be strings, got {key!r}")
        if allowed is not None and key not in allowed:
            raise _fail(f"{path}.{key}", unknown_key_message(key, allowed))
    return value


def _whole(value: Any, path: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, f"expected a whole number, got {_describe(value)}")
    if value < minimum:
        raise _fail(path, f"must be at least {minimum}, got {value}")
    return value


def _rate(value: Any, path: str) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise _fail(path, f"expected a positive number of messages or null, got {_describe(value)}")
    return float(value)


def _duration(value: Any, path: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise _fail(path, str(exc)) from None
    else:
        raise _fail(path, f"expected a duration such as 30m or 2h, got {_describe(value)}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise _fail(path, "must be a finite duration longer than zero")
    return seconds


def _amount(value: Any, path: str, whole: bool) -> Amount:
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            percent = float(value.strip()[:-1])
        except ValueError:
            percent = -1.0
        if not 0 < percent <= 100:
            raise _fail(path, f"'{value}' is not a percentage between 0% and 100%")
        return Amount(percent / 100, relative=True)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise _fail(
            path, f"expected a positive number or a percentage like 50%, got {_describe(value)}"
        )  # noqa: E501
    if whole and not float(value).is_integer():
        raise _fail(path, f"expected a whole number, got {value}")
    return Amount(float(value))


def _limit_fields(value: Any, path: str) -> dict[str, Any]:
    """Validate a (partial) limits mapping; returns the given keys, typed."""
    data = _mapping(value, path, _LIMIT_KEYS)
    fields: dict[str, Any] = {}
    for key, raw in data.items():
        where = f"{path}.{key}"
        if key in ("connections", "messages_per_connection", "burst"):
            fields[key] = _whole(raw, where)
        elif key == "tls":
            try:
                fields[key] = TlsPolicy(raw)
            except ValueError:
                valid = "|".join(p.value for p in TlsPolicy)
                raise _fail(where, f"{raw!r} is not one of {valid}") from None
        else:
            fields[key] = _rate(raw, where)
    return fields


def _limit_change(value: Any, path: str) -> LimitChange:
    data = _mapping(value, path, set(_CHANGE_FIELDS))
    if not data:
        raise _fail(path, "give at least one limit to change")
    return LimitChange(
        **{
            key: _amount(raw, f"{path}.{key}", key in ("connections", "messages_per_connection"))
            for key, raw in data.items()
        }
    )


def _providers(value: Any, path: str) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else [value]
    names = []
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            where = path if items is not value else f"{path}[{i}]"
            raise _fail(where, f"expected a provider name, got {_describe(item)}")
        names.append(item.strip().lower())
    return tuple(names)


def _rule_fields(data: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Typed fields of one (partial) rule entry, keyed like ReplyRule's fields."""
    fields: dict[str, Any] = {}
    for key, raw in data.items():
        where = f"{path}.{key}"
        if key == "id":
            if not isinstance(raw, str) or not raw.strip():
                raise _fail(where, f"expected a rule name, got {_describe(raw)}")
            fields["id"] = raw.strip()
        elif key == "match":
            if not isinstance(raw, str) or not raw:
                raise _fail(where, f"expected a regular expression, got {_describe(raw)}")
            try:
                fields["pattern"] = re.compile(raw, re.I)
            except re.error as exc:
                raise _fail(where, f"invalid regular expression: {exc}") from None
        elif key == "provider":
            fields["providers"] = _providers(raw, where)
        elif key == "action":
            try:
                fields["action"] = Action(raw)
            except ValueError:
                valid = "|".join(a.value for a in Action)
                raise _fail(where, f"{raw!r} is not one of {valid}") from None
        elif key in ("duration", "pause"):
            fields[key] = None if raw is None else _duration(raw, where)
        elif key == "limits":
            fields["limits"] = _limit_change(raw, where)
        elif key == "trigger":
            trigger = _mapping(raw, where, {"count", "window"})
            for needed in ("count", "window"):
                if needed not in trigger:
                    raise _fail(where, f"missing required key '{needed}'")
            fields["trigger"] = Trigger(
                _whole(trigger["count"], f"{where}.count"),
                _duration(trigger["window"], f"{where}.window"),
            )
        elif key in ("alert", "enabled"):
            if not isinstance(raw, bool):
                raise _fail(where, f"expected true or false, got {_describe(raw)}")
            fields[key] = raw
        elif key in ("example", "reason"):
            if not isinstance(raw, str) or not raw:
                raise _fail(where, f"expected a string, got {_describe(raw)}")
            fields[key] = raw
        elif key == "scope":
            try:
                fields["scope"] = Scope(raw)
            except ValueError:
                valid = "|".join(s.value for s in Scope)
                raise _fail(where, f"{raw!r} is not one of {valid}") from None
        elif key in ("permanent", "suppress"):
            if not (isinstance(raw, bool) or (key == "permanent" and raw is None)):
                raise _fail(where, f"expected true or false, got {_describe(raw)}")
            fields[key] = raw
    return fields


def _check_rule(rule: ReplyRule, path: str) -> ReplyRule:
    """Cross-field consistency, named by the rule's path."""
    if rule.action is Action.SET_LIMITS and rule.limits is None:
        raise _fail(path, "action set_limits needs 'limits' (e.g. {per_minute: 10})")
    if rule.action is not Action.SET_LIMITS and (rule.limits is not None or rule.pause):
        raise _fail(path, f"'limits' and 'pause' only apply to set_limits, not {rule.action}")
    if rule.action in (Action.SUSPEND, Action.SET_LIMITS) and rule.duration is None:
        raise _fail(path, f"action {rule.action} needs a 'duration' (e.g. 2h)")
    return rule


def _build_rules(seeds: Sequence[ReplyRule], overrides: Any, path: str) -> tuple[ReplyRule, ...]:
    """A profile's ``replies`` merged over the shipped rules (see the module docstring)."""
    if not isinstance(overrides, list | tuple):
        raise _fail(path, f"expected a list of rules, got {_describe(overrides)}")
    by_id = {rule.id: rule for rule in seeds}
    changed: dict[str, ReplyRule | None] = {}
    added: list[ReplyRule] = []
    seen: set[str] = set()
    for i, entry in enumerate(overrides):
        where = f"{path}[{i}]"
        data = _mapping(entry, where, _RULE_KEYS)
        if "id" not in data:
            raise _fail(where, "missing required key 'id'")
        fields = _rule_fields(data, where)
        rule_id = fields.pop("id")
        if rule_id in seen:
            raise _fail(f"{where}.id", f"rule '{rule_id}' is given twice")
        seen.add(rule_id)
        enabled = fields.pop("enabled", True)
        if rule_id in by_id:
            changed[rule_id] = (
                _check_rule(replace(by_id[rule_id], **fields), where) if enabled else None
            )
            continue
        if not enabled:
            continue
        for needed, field_name in (("match", "pattern"), ("action", "action")):
            if field_name not in fields:
                raise _fail(where, f"new rule '{rule_id}' needs '{needed}'")
        added.append(_check_rule(ReplyRule(id=rule_id, **fields), where))
    kept = [changed.get(rule.id, rule) for rule in seeds]
    return tuple(added) + tuple(rule for rule in kept if rule is not None)


def _merge_limits(
    seed: Mapping[str, Mapping[str, Any]], overrides: Any, path: str
) -> dict[str, dict[str, Any]]:
    merged = {name: dict(fields) for name, fields in seed.items()}
    for name, value in _mapping(overrides, path).items():
        merged.setdefault(name.lower(), {}).update(_limit_fields(value, f"{path}.{name}"))
    return merged


def _resolve_limits(raw: Mapping[str, Mapping[str, Any]], path: str) -> dict[str, LaneLimits]:
    base = dict(raw.get("default", {}))
    missing = {"connections", "messages_per_connection", "burst"} - base.keys()
    if missing:
        raise _fail(f"{path}.default", f"missing required key '{sorted(missing)[0]}'")
    resolved = {}
    for name, fields in raw.items():
        values = {"per_minute": None, "per_hour": None, "per_day": None, **base, **fields}
        resolved[name] = LaneLimits(**values)
    return resolved


def _parse_document(data: Any, path: str) -> tuple[dict[str, dict[str, Any]], Any]:
    doc = _mapping(data, path, {"limits", "replies"})
    limits = {
        name.lower(): _limit_fields(value, f"{path}.limits.{name}")
        for name, value in _mapping(doc.get("limits", {}), f"{path}.limits").items()
    }
    return limits, doc.get("replies", [])


def _shipped_rules(entries: Any, path: str) -> tuple[ReplyRule, ...]:
    """The shipped table: every rule complete, with its verdict and an example."""
    if not isinstance(entries, list | tuple):
        raise _fail(path, f"expected a list of rules, got {_describe(entries)}")
    rules: list[ReplyRule] = []
    for i, entry in enumerate(entries):
        where = f"{path}[{i}]"
        data = _mapping(entry, where, _SHIPPED_RULE_KEYS)
        for needed in ("id", "match", "action", "scope", "reason", "example"):
            if needed not in data:
                raise _fail(where, f"missing required key '{needed}'")
        fields = _rule_fields(data, where)
        if any(rule.id == fields["id"] for rule in rules):
            raise _fail(f"{where}.id", f"rule '{fields['id']}' is given twice")
        rule = _check_rule(ReplyRule(**fields), where)
        assert rule.scope is not None
        if rule.scope not in rule.action.scopes:
            raise _fail(where, f"action {rule.action} does not fit scope {rule.scope}")
        rules.append(rule)
    return tuple(rules)


@lru_cache(maxsize=1)
def _shipped() -> tuple[dict[str, dict[str, Any]], tuple[ReplyRule, ...]]:
    text = resources.files("mailctl").joinpath("data", DATA_FILE).read_text(encoding="utf-8")
    path = DATA_FILE
    # The shipped file is ours, not user input: libyaml's parser reads it ~7x faster than the
    # pure-Python one (every command that resolves rules pays this at start-up).
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    limits, replies = _parse_document(yaml.load(text, Loader=loader), path)
    return limits, _shipped_rules(replies, f"{path}.replies")


def shipped_rules() -> tuple[ReplyRule, ...]:
    """The shipped reply rules, in order, without any profile's overrides."""
    return _shipped()[1]


def resolve_rules(
    overrides: Mapping[str, Any] | None = None, *, source: str = "rules"
) -> tuple[Mapping[str, LaneLimits], tuple[ReplyRule, ...]]:
    """The shipped limits and reply rules with a profile's ``rules:`` mapping merged over them.

    ``source`` prefixes every error's key path, e.g. ``profiles.direct.rules`` gives
    ``profiles.direct.rules.replies[2].action: 'pause' is not one of suspend|...``.
    Raises `ConfigError`.
    """
    seed_limits, seed_rules = _shipped()
    limits_raw: Mapping[str, Mapping[str, Any]] = seed_limits
    rules = seed_rules
    if overrides is not None:
        doc = _mapping(overrides, source, {"limits", "replies"})
        if "limits" in doc:
            limits_raw = _merge_limits(seed_limits, doc["limits"], f"{source}.limits")
        if "replies" in doc:
            rules = _build_rules(seed_rules, doc["replies"], f"{source}.replies")
    return MappingProxyType(_resolve_limits(limits_raw, f"{source}.limits")), tuple(rules)
