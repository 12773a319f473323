"""Provider limits and reply rules: the shipped data, overrides, and agreement with classify."""

from __future__ import annotations

import random

import pytest

from mailctl.config.provider_rules import (
    Action,
    Amount,
    LaneLimits,
    ReplyRule,
    Scope,
    TlsPolicy,
    Trigger,
    shipped_rules,
)
from mailctl.errors import ConfigError
from mailctl.replies.classify import classify_reply
from mailctl.replies.rules import default_rules, load_rules, match_reply
from mailctl.reputation.lanes import LaneEventKind
from mailctl.reputation.scheduler import Scheduler

A = Action
H = 3600.0
M = 60.0

# Every reply in PROVIDERS.md: (code, text, the action and duration that document names).
PROVIDERS_MD: list[tuple[int, str, Action, float | None]] = [
    # Google
    (421, "421 4.7.28 [x.x.x.x] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited. Please visit https://support.google.com/mail/?p=UnsolicitedRateLimitError to review our Bulk Email Senders Guidelines. - gsmtp", A.SET_LIMITS, 30 * M),  # noqa: E501
    (421, "421-4.7.0 [x.x.x.x] Our system has detected an unusual amount of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily blocked.", A.SUSPEND, None),  # noqa: E501
    (421, "421 4.7.0 [x.x.x.x] Our system has detected that this message is suspicious due to the very low reputation of the sending domain.", A.STOP_CAMPAIGN, None),  # noqa: E501
    (421, "421 4.7.0 [x.x.x.x] Our system has detected that this message is suspicious due to the nature of the content and/or the links within.", A.STOP_CAMPAIGN, None),  # noqa: E501
    (421, "421 4.7.32 This mail has been rate limited because there is no DMARC alignment", A.STOP_CAMPAIGN, None),  # noqa: E501
    (450, "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered. Please resend your message at a later point. https://support.google.com/mail/?p=ReceivingRate - gsmtp", A.DEFER_RECIPIENT, None),  # noqa: E501
    (451, "451 4.3.0 Mail server temporarily rejected message. - gsmtp", A.DEFER_RECIPIENT, None),
    (452, "452 4.2.2 The email account that you tried to reach is over quota. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp", A.DEFER_RECIPIENT, None),  # noqa: E501
    (550, "550 5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos. https://support.google.com/mail/?p=NoSuchUser - gsmtp", A.BOUNCE_RECIPIENT, None),  # noqa: E501
    (550, "550 5.2.1 The email account that you tried to reach is disabled. https://support.google.com/mail/?p=DisabledUser", A.BOUNCE_RECIPIENT, None),  # noqa: E501
    (550, "550 5.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered. https://support.google.com/mail/?p=ReceivingRatePerm", A.DEFER_RECIPIENT, None),  # noqa: E501
    (552, "552 5.2.2 The email account that you tried to reach is over quota and inactive. https://support.google.com/mail/?p=OverQuotaPerm", A.BOUNCE_RECIPIENT, None),  # noqa: E501
    (550, "550 5.7.1 [x.x.x.x] Our system has detected that this message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked. https://support.google.com/mail/?p=UnsolicitedMessageError", A.SET_LIMITS, None),  # noqa: E501
    (550, "550 5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC policy.", A.STOP_CAMPAIGN, None),  # noqa: E501
    # Yahoo / AOL
    (421, "421 4.7.0 [TSS04] Messages from x.x.x.x temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", A.SUSPEND, 2 * H),  # noqa: E501
    (421, "421 [IPTS04] Messages from (x.x.x.x) temporarily deferred due to unexpected volume or user complaints", A.SUSPEND, 2 * H),  # noqa: E501
    (421, "421 4.7.0 [TSS05] Messages from x.x.x.x temporarily deferred due to user complaints", A.SUSPEND, 4 * H),  # noqa: E501
    (421, "421 [IPTS05] Messages from (x.x.x.x) temporarily deferred", A.SUSPEND, 4 * H),
    (421, "421 4.7.1 [TS03] All messages from x.x.x.x will be permanently deferred; Retrying will NOT succeed.", A.DISABLE_IP, None),  # noqa: E501
    (421, "421 Max message per connection reached, closing transmission channel", A.SET_LIMITS, None),  # noqa: E501
    (451, "451 Message temporarily deferred - [170]", A.DEFER_RECIPIENT, None),
    (553, "553 5.7.1 [BL21] Connections will not be accepted from x.x.x.x, because the ip is in Spamhaus's list; see https://postmaster.yahooinc.com/error-codes", A.SUSPEND, None),  # noqa: E501
    (554, "554 Message not allowed - [PH01] Email not accepted for policy reasons. Please visit https://postmaster.yahooinc.com/error-codes", A.STOP_CAMPAIGN, None),  # noqa: E501
    (554, "554 delivery error: dd This user doesn't have a yahoo.com account (x@yahoo.com) [0] - mta1234.mail.bf1.yahoo.com", A.BOUNCE_RECIPIENT, None),  # noqa: E501
    (554, "554 delivery error: dd Sorry, your message to x@yahoo.com cannot be delivered. This mailbox is disabled (554.30). - mta1234.mail.bf1.yahoo.com", A.BOUNCE_RECIPIENT, None),  # noqa: E501
    # Microsoft
    (451, "451 4.7.650 The mail server [x.x.x.x] has been temporarily rate limited due to IP reputation. For e-mail delivery information, see https://postmaster.live.com (S775)", A.SET_LIMITS, 90 * M),  # noqa: E501
    (451, "451 4.7.500 Server busy. Please try again later from [x.x.x.x]. (S77719)", A.SET_LIMITS, None),  # noqa: E501
    (421, "421 4.3.2 The maximum number of concurrent connections per resource forest has exceeded a limit, closing transmission channel", A.SET_LIMITS, None),  # noqa: E501
    (550, "550 5.7.1 Unfortunately, messages from [x.x.x.x] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150). You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors.", A.SUSPEND, 2 * H),  # noqa: E501
    (550, "550 5.7.515 Access denied, sending domain example.com does not meet the required authentication level.", A.STOP_CAMPAIGN, None),  # noqa: E501
    (550, "550 5.5.0 Requested action not taken: mailbox unavailable", A.BOUNCE_RECIPIENT, None),
    # Others
    (421, "421 4.7.1 Messages to x@icloud.com deferred due to excessive volume. Try again later", A.DEFER_RECIPIENT, None),  # noqa: E501
    (421, "421 [HCM1] Your mail from x.x.x.x was deferred", A.SUSPEND, 15 * M),
    (451, "451 4.7.1 Received too many messages from a new or untrusted IP: x.x.x.x", A.SET_LIMITS, None),  # noqa: E501
    (451, "451 4.7.1 <x@example.org>: Recipient address rejected: Greylisted for 5 minutes", A.DEFER_RECIPIENT, None),  # noqa: E501
    (554, "554 5.2.0 sc969: IP reputation ratelimit in effect", A.SET_LIMITS, None),
    (421, "421 Too many connections", A.SET_LIMITS, None),
    (421, "421 4.2.0 Throttled - try again later. Please see https://postmaster.comcast.net/smtp-error-codes.php#RL0000", A.SET_LIMITS, None),  # noqa: E501
]  # fmt: skip


@pytest.mark.parametrize(("code", "text", "action", "duration"), PROVIDERS_MD)
def test_every_providers_md_reply_has_the_named_action_and_agrees_with_classify(
    code: int, text: str, action: Action, duration: float | None
) -> None:
    found = match_reply(text)
    assert found is not None, "no rule for a reply in PROVIDERS.md"
    assert found.action is action, found.rule.id
    if duration is not None:
        assert found.rule.duration == duration
    verdict = classify_reply(code, text)
    # The classifier's scope and the rule's action must tell the same story.
    assert verdict.scope in action.scopes, (verdict.scope, found.rule.id, verdict.rule)
    if action.affects_lane or action is Action.STOP_CAMPAIGN:
        assert not verdict.suppress  # sender-side problems never suppress the recipient


def test_named_limits_of_the_lane_rules() -> None:
    google = match_reply(PROVIDERS_MD[0][1])
    assert google is not None and google.rule.limits is not None
    assert google.rule.limits.per_minute == Amount(10)
    assert google.rule.limits.connections == Amount(1)
    assert google.rule.pause == 10 * M
    s775 = match_reply(PROVIDERS_MD[25][1])
    assert s775 is not None and s775.rule.limits is not None
    assert (s775.rule.limits.connections, s775.rule.limits.per_minute) == (Amount(1), Amount(1))
    too_many = match_reply("421 Too many connections")
    assert too_many is not None and too_many.rule.limits is not None
    assert too_many.rule.limits.connections == Amount(0.5, relative=True)  # of those that held
    forest = match_reply(PROVIDERS_MD[27][1])
    assert forest is not None and forest.rule.limits is not None
    assert forest.rule.limits.connections == Amount(0.5, relative=True)
    ts03 = match_reply(PROVIDERS_MD[18][1])
    assert ts03 is not None and ts03.rule.alert and ts03.rule.duration is None


def test_every_shipped_rule_matches_its_own_example() -> None:
    rules = default_rules()
    for rule in rules.replies:
        assert rule.example, rule.id
        found = rules.match(rule.example)
        assert found is not None and found.rule.id == rule.id


# What the lanes report when a rule acts, by the rule's action.
EVENT_OF_ACTION = {
    Action.SUSPEND: LaneEventKind.SUSPENDED,
    Action.SET_LIMITS: LaneEventKind.SLOWED,
    Action.DISABLE_IP: LaneEventKind.DISABLED,
    Action.STOP_CAMPAIGN: LaneEventKind.STOP_CAMPAIGN,
    Action.DEFER_RECIPIENT: LaneEventKind.DEFER_RECIPIENT,
    Action.BOUNCE_RECIPIENT: LaneEventKind.BOUNCE_RECIPIENT,
}


@pytest.mark.parametrize("rule", shipped_rules(), ids=lambda rule: rule.id)
def test_every_rule_example_classifies_to_its_own_rule_and_acts_with_its_own_action(
    rule: ReplyRule,
) -> None:
    assert rule.example
    verdict = classify_reply(None, rule.example)
    assert (verdict.rule, verdict.scope, verdict.reason) == (rule.id, rule.scope, rule.reason)
    assert verdict.suppress is (rule.suppress and verdict.permanent)
    assert rule.scope in rule.action.scopes
    lane = Scheduler(default_rules(), rng=random.Random(0)).lane("192.0.2.10", "example.net")
    for _ in range(rule.trigger.count if rule.trigger else 1):
        event = lane.on_reply(rule.example, None, 1000.0, from_receiver=True)
    assert (event.kind, event.rule) == (EVENT_OF_ACTION[rule.action], rule.id)


def test_one_table_for_the_classifier_and_the_lanes() -> None:
    from mailctl.replies.classify import PROVIDER_RULES

    assert [rule.id for rule in PROVIDER_RULES] == [rule.id for rule in default_rules().replies]
    assert len(PROVIDER_RULES) == 40


def test_named_delay_is_kept_for_the_recipient() -> None:
    found = match_reply(
        "451 4.7.1 <x@example.org>: Recipient address rejected: Greylisted for 5 minutes"
    )  # noqa: E501
    assert found is not None and found.named_delay == 300 and found.retry_after == 300
    found = match_reply(
        "421 4.7.1 Messages to x@icloud.com deferred due to excessive volume. Try again later"
    )  # noqa: E501
    assert found is not None and found.named_delay is None and found.retry_after == 30 * M


def test_no_rule_for_ordinary_replies() -> None:
    assert match_reply("250 2.0.0 OK") is None
    assert match_reply("421 4.7.0 Try again later") is None
    assert match_reply("") is None


def test_seeded_limits_follow_providers_md() -> None:
    rules = default_rules()
    expected = {
        "default": (10, 100),
        "google": (5, 50),
        "microsoft": (5, 50),
        "yahoo": (5, 20),
        "apple": (10, 5),
    }
    for provider, (connections, per_connection) in expected.items():
        limits = rules.limits_for(provider)
        assert (limits.connections, limits.messages_per_connection) == (
            connections,
            per_connection,
        )
    assert rules.limits_for("google").tls is TlsPolicy.REQUIRED
    assert rules.limits_for("yahoo").tls is TlsPolicy.OPPORTUNISTIC
    assert rules.limits_for("default").per_minute == 6000  # 100/s
    assert rules.limits_for("some-isp.example") == rules.limits_for("default")


def test_limit_overrides_merge_key_by_key() -> None:
    rules = load_rules(
        {
            "limits": {
                "google": {"connections": 2},
                "default": {"per_minute": 600, "burst": 10},
                "gmx.net": {"connections": 1, "per_hour": 500},
            }
        }
    )
    google = rules.limits_for("google")
    assert (google.connections, google.messages_per_connection) == (2, 50)
    assert google.per_minute == 600  # inherited from the overridden default
    assert rules.limits_for("gmx.net") == LaneLimits(1, 100, 600, 500, None, 10)


def test_reply_overrides_change_add_and_drop_rules() -> None:
    rules = load_rules(
        {
            "replies": [
                {"id": "yahoo.tss04", "duration": "3h"},
                {"id": "apple.hcm", "enabled": False},
                {
                    "id": "mine.busy",
                    "match": r"4\.7\.500",
                    "action": "suspend",
                    "duration": "10m",
                    "provider": ["microsoft", "office365"],
                    "trigger": {"count": 2, "window": "5m"},
                },
            ]
        }
    )
    tss = rules.match(PROVIDERS_MD[14][1])
    assert tss is not None and tss.rule.duration == 3 * H
    assert rules.match("421 [HCM1] Your mail from x.x.x.x was deferred") is None
    busy = "451 4.7.500 Server busy. Please try again later from [x.x.x.x]. (S77719)"
    mine = rules.match(busy, "microsoft")
    assert mine is not None and mine.rule.id == "mine.busy"  # a profile's rule wins
    assert mine.rule.trigger == Trigger(2, 300)
    other = rules.match(busy, "google")  # not the provider it names: the shipped rule applies
    assert other is not None and other.rule.id == "microsoft.server-busy"
    assert default_rules().match(PROVIDERS_MD[14][1]).rule.duration == 2 * H  # type: ignore[union-attr]  # noqa: E501


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"limits": {"google": {"connections": 0}}}, "rules.limits.google.connections: must be at least 1"),  # noqa: E501
        ({"limits": {"google": {"conections": 2}}}, "rules.limits.google.conections: unknown key 'conections'"),  # noqa: E501
        ({"limits": {"google": {"tls": "maybe"}}}, "rules.limits.google.tls: 'maybe' is not one of"),  # noqa: E501
        ({"limits": {"google": {"per_minute": "fast"}}}, "rules.limits.google.per_minute: expected a positive number"),  # noqa: E501
        ({"replies": {"id": "x"}}, "rules.replies: expected a list of rules"),
        ({"replies": [{"match": "x"}]}, "rules.replies[0]: missing required key 'id'"),
        ({"replies": [{"id": "x", "match": "(", "action": "suspend"}]}, "rules.replies[0].match: invalid regular expression"),  # noqa: E501
        ({"replies": [{"id": "x", "match": "x", "action": "pause"}]}, "rules.replies[0].action: 'pause' is not one of suspend|"),  # noqa: E501
        ({"replies": [{"id": "x", "match": "x"}]}, "rules.replies[0]: new rule 'x' needs 'action'"),  # noqa: E501
        ({"replies": [{"id": "x", "match": "x", "action": "suspend"}]}, "rules.replies[0]: action suspend needs a 'duration'"),  # noqa: E501
        ({"replies": [{"id": "x", "match": "x", "action": "set_limits", "duration": "1h"}]}, "rules.replies[0]: action set_limits needs 'limits'"),  # noqa: E501
        ({"replies": [{"id": "yahoo.tss04", "duration": "soon"}]}, "rules.replies[0].duration: 'soon' is not a duration"),  # noqa: E501
        ({"replies": [{"id": "x", "match": "x", "action": "set_limits", "duration": "1h", "limits": {"connections": "150%"}}]}, "rules.replies[0].limits.connections: '150%' is not a percentage"),  # noqa: E501
        ({"replies": [{"id": "x", "match": "x", "action": "suspend", "duration": "1h", "trigger": {"count": 2}}]}, "rules.replies[0].trigger: missing required key 'window'"),  # noqa: E501
        ({"replies": [{"id": "x", "match": "x", "action": "suspend", "duration": "1h", "alert": "yes"}]}, "rules.replies[0].alert: expected true or false"),  # noqa: E501
        ({"colour": "red"}, "rules.colour: unknown key 'colour'"),
        ({"replies": [{"id": "yahoo.tss04", "suppress": True}]}, "rules.replies[0].suppress: unknown key 'suppress'"),  # noqa: E501
    ],
)  # fmt: skip
def test_invalid_overrides_name_the_key_path(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_rules(overrides)
    assert message in str(raised.value)


def test_error_prefix_names_the_profile() -> None:
    with pytest.raises(ConfigError, match=r"^profiles\.direct\.rules\.limits\.yahoo\.burst: "):
        load_rules({"limits": {"yahoo": {"burst": -1}}}, source="profiles.direct.rules")


def test_action_scopes_cover_every_action() -> None:
    for action in Action:
        assert action.scopes <= set(Scope)
        assert action.scopes
