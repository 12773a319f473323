"""Per-provider lane limits and reply rules as the lanes use them: a `RuleSet` to match replies.

The rules are data: ``mailctl/data/provider_rules.yaml``, one table read both by the classifier
(`mailctl.replies.classify`: scope, reason, suppression) and by the lanes (this module: the
action, its durations and limits). Their format, validation and the merge of a profile's
``rules:`` overrides live in `mailctl.config.provider_rules`; this module only matches.

Imports config and replies.classify; never the lanes, the engine or the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from mailctl.config.provider_rules import Action, LaneLimits, ReplyRule, resolve_rules
from mailctl.replies.classify import parse_reply_delay

__all__ = ["RuleMatch", "RuleSet", "default_rules", "load_rules", "match_reply"]


@dataclass(frozen=True)
class RuleMatch:
    """A rule that matched a reply, with the delay the reply itself named (if any)."""

    rule: ReplyRule
    reply: str
    named_delay: float | None = None

    @property
    def action(self) -> Action:
        return self.rule.action

    @property
    def retry_after(self) -> float | None:
        """For recipient deferrals: the reply's own delay, else the rule's duration."""
        return self.named_delay if self.named_delay is not None else self.rule.duration


@dataclass(frozen=True)
class RuleSet:
    limits: Mapping[str, LaneLimits]  # always has "default"
    replies: tuple[ReplyRule, ...]

    def limits_for(self, provider: str) -> LaneLimits:
        return self.limits.get(provider) or self.limits["default"]

    def match(self, reply_text: str, provider: str | None = None) -> RuleMatch | None:
        """The first rule whose regex matches the one-line reply, for this provider."""
        line = " ".join((reply_text or "").split())
        if not line:
            return None
        for rule in self.replies:
            if rule.applies_to(provider) and rule.pattern.search(line):
                delay = parse_reply_delay(line)
                return RuleMatch(rule, line, float(delay) if delay is not None else None)
        return None

    def rule(self, rule_id: str) -> ReplyRule:
        for rule in self.replies:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)


def load_rules(overrides: Mapping[str, Any] | None = None, *, source: str = "rules") -> RuleSet:
    """The shipped rules with a profile's ``rules:`` mapping merged over them.

    ``source`` prefixes every error's key path (see `resolve_rules`). Raises `ConfigError`.
    """
    limits, replies = resolve_rules(overrides, source=source)
    return RuleSet(limits, replies)


@lru_cache(maxsize=1)
def default_rules() -> RuleSet:
    """The shipped rules, without any profile's overrides."""
    return load_rules(None)


def match_reply(
    reply_text: str, provider: str | None = None, rules: RuleSet | None = None
) -> RuleMatch | None:
    """The rule deciding what a reply does to its lane (shipped rules unless given)."""
    return (rules or default_rules()).match(reply_text, provider)
