"""The reply classifier against every reply in PROVIDERS.md and the RFC 3463 classes."""

from __future__ import annotations

import pytest

from mailctl.config.provider_rules import Scope
from mailctl.replies.classify import (
    classify_failure,
    classify_reply,
    parse_enhanced_status,
    parse_reply_delay,
)

R, L, C, T = Scope.RECIPIENT, Scope.LANE, Scope.CAMPAIGN, Scope.TRANSIENT

# (code, reply text, expected scopes (either is right where the document says "campaign/lane"),
#  suppress)
PROVIDER_REPLIES = [
    # Google
    (
        421,
        "421 4.7.28 [x.x.x.x] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited. Please visit https://support.google.com/mail/?p=UnsolicitedRateLimitError to review our Bulk Email Senders Guidelines. - gsmtp",  # noqa: E501
        {L},
        False,
    ),  # noqa: E501
    (
        421,
        "421-4.7.0 [x.x.x.x] Our system has detected an unusual amount of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily blocked.",  # noqa: E501
        {L},
        False,
    ),  # noqa: E501
    (
        421,
        "421 4.7.0 [x.x.x.x] Our system has detected that this message is suspicious due to the very low reputation of the sending domain.",  # noqa: E501
        {C},
        False,
    ),  # noqa: E501
    (
        421,
        "421 4.7.0 [x.x.x.x] Our system has detected that this message is suspicious due to the nature of the content and/or the links within.",  # noqa: E501
        {C},
        False,
    ),  # noqa: E501
    (
        421,
        "421 4.7.32 This mail has been rate limited because there is no DMARC alignment",
        {C},
        False,
    ),
    (
        450,
        "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered. Please resend your message at a later point. https://support.google.com/mail/?p=ReceivingRate - gsmtp",  # noqa: E501
        {R},
        False,
    ),  # noqa: E501
    (451, "451 4.3.0 Mail server temporarily rejected message. - gsmtp", {T}, False),
    (
        452,
        "452 4.2.2 The email account that you tried to reach is over quota. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp",  # noqa: E501
        {R},
        False,
    ),  # noqa: E501
    (
        550,
        "550 5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos. https://support.google.com/mail/?p=NoSuchUser - gsmtp",  # noqa: E501
        {R},
        True,
    ),  # noqa: E501
    (
        550,
        "550 5.2.1 The email account that you tried to reach is disabled. https://support.google.com/mail/?p=DisabledUser",
        {R},
        True,
    ),  # noqa: E501
    (
        550,
        "550 5.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered. https://support.google.com/mail/?p=ReceivingRatePerm",  # noqa: E501
        {T},
        False,
    ),  # noqa: E501
    (
        552,
        "552 5.2.2 The recipient's inbox is out of storage space and inactive. https://support.google.com/mail/?p=OverQuotaPerm",
        {R},
        True,
    ),  # noqa: E501
    (
        550,
        "550 5.7.1 [x.x.x.x] Our system has detected that this message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked. https://support.google.com/mail/?p=UnsolicitedMessageError",  # noqa: E501
        {C, L},
        False,
    ),  # noqa: E501
    (
        550,
        "550 5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC policy.",  # noqa: E501
        {C},
        False,
    ),  # noqa: E501
    # Yahoo / AOL
    (
        421,
        "421 4.7.0 [TSS04] Messages from x.x.x.x temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",  # noqa: E501
        {L},
        False,
    ),  # noqa: E501
    (
        421,
        "421 [IPTS04] Messages from (x.x.x.x) temporarily deferred due to unexpected volume or user complaints",  # noqa: E501
        {L},
        False,
    ),  # noqa: E501
    (
        421,
        "421 4.7.1 [TS03] All messages from x.x.x.x will be permanently deferred; Retrying will NOT succeed.",  # noqa: E501
        {L},
        False,
    ),  # noqa: E501
    (421, "421 Max message per connection reached, closing transmission channel", {L}, False),
    (451, "451 Message temporarily deferred - [170]", {T}, False),
    (
        553,
        "553 5.7.1 [BL21] Connections will not be accepted from x.x.x.x, because the ip is in Spamhaus's list",  # noqa: E501
        {L},
        False,
    ),  # noqa: E501
    (554, "554 Message not allowed - [PH01] Email not accepted for policy reasons.", {C}, False),
    (554, "554 delivery error: dd This user doesn't have a yahoo.com account", {R}, True),
    (
        554,
        "554 delivery error: dd Sorry, your message to x cannot be delivered. This mailbox is disabled (554.30).",  # noqa: E501
        {R},
        True,
    ),  # noqa: E501
    # Microsoft
    (
        451,
        "451 4.7.650 The mail server [x.x.x.x] has been temporarily rate limited due to IP reputation. For e-mail delivery information, see https://postmaster.live.com (S775)",  # noqa: E501
        {L},
        False,
    ),  # noqa: E501
    (451, "451 4.7.500 Server busy. Please try again later from [x.x.x.x]. (S77719)", {L}, False),
    (
        421,
        "421 4.3.2 The maximum number of concurrent connections per resource forest has exceeded a limit, closing transmission channel",  # noqa: E501
        {L},
        False,
    ),  # noqa: E501
    (
        550,
        "550 5.7.1 Unfortunately, messages from [x.x.x.x] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150).",  # noqa: E501
        {L},
        False,
    ),  # noqa: E501
    (
        550,
        "550 5.7.515 Access denied, sending domain example.com does not meet the required authentication level.",  # noqa: E501
        {C},
        False,
    ),  # noqa: E501
    (550, "550 5.5.0 Requested action not taken: mailbox unavailable", {R}, True),
    # Others
    (
        421,
        "421 4.7.1 Messages to x@icloud.com deferred due to excessive volume. Try again later",
        {R},
        False,
    ),  # noqa: E501
    (421, "421 [HCM1] Your mail from x.x.x.x was deferred", {L}, False),
    (451, "451 4.7.1 Received too many messages from a new or untrusted IP: x.x.x.x", {L}, False),
    (
        451,
        "451 4.7.1 <x@example.org>: Recipient address rejected: Greylisted for 5 minutes",
        {T},
        False,
    ),
    (554, "554 5.2.0 sc969: IP reputation ratelimit in effect", {L}, False),
    (421, "421 Too many connections", {L}, False),
    (421, "421 RL0000 Too many sessions are opened from your IP", {L}, False),
]


@pytest.mark.parametrize(("code", "text", "scopes", "suppress"), PROVIDER_REPLIES)
def test_provider_replies_classify_to_their_scope_and_suppression(
    code: int, text: str, scopes: set[Scope], suppress: bool
) -> None:
    verdict = classify_reply(code, text)
    assert verdict.scope in scopes, verdict
    assert verdict.suppress is suppress, verdict
    assert verdict.rule


@pytest.mark.parametrize(
    ("code", "text", "reason", "scope", "permanent", "suppress"),
    [
        (250, "250 2.0.0 OK 1700000000 x - gsmtp", "delivered", R, False, False),
        (550, "550 5.1.1 <a@b.example>", "userunknown", R, True, True),
        (550, "550 5.1.2 <a@b.example>", "hostunknown", R, True, True),
        (550, "550 5.1.6", "hasmoved", R, True, True),
        (556, "556 5.1.10", "notaccept", R, True, True),
        (552, "552 5.2.2", "mailboxfull", R, True, False),
        (552, "552 5.3.4", "mesgtoobig", C, True, False),
        (450, "450 4.1.1 <a@b.example>", "userunknown", T, False, False),
        (451, "451 4.4.1", "networkerror", T, False, False),
        (550, "550 5.7.25", "requireptr", L, True, False),
        (550, "550 5.7.26", "authfailure", C, True, False),
        (421, "421", "toomanyconn", L, False, False),
        (451, "451", "undefined", T, False, False),
        (550, "550", "onhold", R, True, False),
        (501, "501 syntax", "syntaxerror", C, True, False),
    ],
)
def test_rfc3463_status_classes_give_reason_scope_and_permanence(
    code: int, text: str, reason: str, scope: Scope, permanent: bool, suppress: bool
) -> None:
    verdict = classify_reply(code, text)
    assert (verdict.reason, verdict.scope, verdict.permanent, verdict.suppress) == (
        reason,
        scope,
        permanent,
        suppress,
    ), verdict


@pytest.mark.parametrize(
    "text",
    [
        "550 5.7.1 Service unavailable; client [192.0.2.1] blocked using zen.spamhaus.org",
        "550 5.7.23 SPF validation failed",
        "550 5.7.1 Email rejected per DMARC policy for example.com",
        "554 5.7.1 Message rejected as spam by content filter",
        "550 5.7.1 Relaying denied",
    ],
)
def test_sender_scoped_never_suppresses(text: str) -> None:
    verdict = classify_reply(None, text)
    assert verdict.scope is not Scope.RECIPIENT
    assert not verdict.suppress


@pytest.mark.parametrize(
    "text",
    [
        "550 No such user here",
        "550 <x@example.org>... User unknown",
        "550 Requested action not taken: mailbox unavailable",
        "550 5.0.0 Recipient does not exist",
        "550 Host or domain name not found",
    ],
)
def test_recipient_unknown_across_mtas_suppresses(text: str) -> None:
    assert classify_reply(None, text).suppress


def test_mailbox_full_is_soft() -> None:
    assert not classify_reply(552, "552 5.2.2 Mailbox full").suppress
    assert not classify_reply(452, "452 4.2.2 Over quota").suppress


def test_dsn_fields_classify_and_user_unknown_at_data_is_a_filter() -> None:
    verdict = classify_failure("5.0.0", "smtp; 550 5.1.1 <x@example.org>... User unknown", "failed")
    assert (verdict.status, verdict.reason, verdict.suppress) == ("5.1.1", "userunknown", True)
    delayed = classify_failure("4.4.7", "Delivery time expired", "delayed")
    assert not delayed.suppress and not delayed.permanent
    # "user unknown" in reply to DATA is a content filter, not a missing mailbox
    data = classify_failure(None, "550 User unknown (in reply to end of DATA command)", "failed")
    assert data.reason == "filtered" and not data.suppress


def test_enhanced_status_is_found_anywhere_in_the_reply() -> None:
    assert parse_enhanced_status("550-5.7.26 Unauthenticated") == "5.7.26"
    assert parse_enhanced_status("host 192.0.2.153 said 550 5.1.1 nope") == "5.1.1"
    assert parse_enhanced_status("connect to 10.4.5.6 failed") is None
    assert parse_enhanced_status("[TSS04] - 4.16.55.1; see") is None
    assert parse_enhanced_status("over quota (#5.2.2)") == "5.2.2"
    assert parse_enhanced_status("") is None


def test_retry_delay_is_read_from_the_reply_text() -> None:
    assert parse_reply_delay("451 4.7.1 Greylisted for 5 minutes") == 300
    assert parse_reply_delay("450 try again in 90 seconds") == 90
    assert parse_reply_delay("421 Please retry after 2 hours") == 7200
    assert parse_reply_delay("550 5.1.1 no such user") is None


def test_bounce_rules_read_the_evidence_around_user_unknown() -> None:
    # A local delivery agent or a directory lookup proves the mailbox is missing.
    local = classify_failure("5.5.0", "mail.local: unknown user: a", "failed")
    assert (local.reason, local.suppress) == ("userunknown", True)
    notes = classify_failure(None, "User not listed in public Name & Address Book", "failed")
    assert (notes.reason, notes.suppress) == ("userunknown", True)
    # Pipelining: the DATA reply comes first, the MTA's own X.1.1 verdict for the address after.
    transcript = (
        ">>> DATA\n<<< 550 5.5.0 Invalid recipient\n550 5.1.1 <a@example.fr>... User unknown"
    )
    piped = classify_failure("5.5.0", "550 5.5.0 Invalid recipient", "failed", context=transcript)
    assert (piped.reason, piped.suppress) == ("userunknown", True)
    # ... unless the remote's own code is a policy code: a filter's answer.
    policy = classify_failure(
        "5.7.1", "550 5.7.1 <a@example.fr>: User unknown", "failed", context=transcript
    )
    assert (policy.reason, policy.suppress) == ("filtered", False)
    # An empty address slot: nothing was looked up.
    empty = classify_failure("5.1.351", "550 5.1.351 Remote server returned -> 550 : User unknown")
    assert (empty.reason, empty.suppress) == ("filtered", False)
    # A bare host name that does not exist.
    host = classify_failure(None, "after end of data: 553 mx.example.com does not exist")
    assert (host.reason, host.suppress) == ("hostunknown", True)
    relay = classify_failure(None, "<<< 550 Insecure Mail Relay")
    assert (relay.reason, relay.suppress) == ("norelaying", False)
