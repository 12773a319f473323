"""What happened to one claimed message (`Outcome`), and what an SMTP reply means for it.

Pure: no I/O, no clock (``now`` is passed in). Imports the domain (reply classification,
lane events) and mailctl.model, nothing else of delivery.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from mailctl.config.provider_rules import Scope
from mailctl.delivery.transport import Reply, SenderFault
from mailctl.model import MessageState
from mailctl.replies.classify import classify_reply, parse_enhanced_status, parse_reply_delay
from mailctl.reputation.lanes import LaneEvent, LaneEventKind


@dataclass(slots=True)
class Outcome:
    """What happened to one claimed message; committed in batches.

    ``state`` is any final state of an attempt, or QUEUED for a message released unsent.
    """

    message_id: int
    campaign_id: int
    email: str
    state: MessageState
    attempted: bool
    at: float
    next_attempt_at: float
    ip: str | None = None
    provider: str | None = None
    code: int | None = None
    reply: str | None = None
    reason: str | None = None
    rule: str | None = None
    status: str | None = None
    suppress: bool = False
    scope: str | None = None
    day: str | None = None  # the sending IP's local day (its warm-up cap's day)
    # No answer after the final dot: the receiver may have the message already.
    possible_duplicate: bool = False
    fault: str | None = None  # a `SenderFault`: the sending side's own problem
    # Deferred only: why it waits (stable, to group by: "retry after 451 4.7.1") and the
    # full reason with its times ("retry 3 at 09:55 after 451 4.7.1 …").
    wait_kind: str | None = None
    wait_reason: str | None = None


def new_outcome(
    message: dict[str, Any],
    state: MessageState,
    now: float,
    *,
    attempted: bool,
    day: str | None,
    **extra: Any,
) -> Outcome:
    """An outcome for a claimed message row; ``next_attempt_at`` defaults to ``now``."""
    return Outcome(
        message_id=message["id"],
        campaign_id=message["campaign_id"],
        email=message["email"],
        state=state,
        attempted=attempted,
        at=now,
        next_attempt_at=extra.pop("next_attempt_at", now),
        day=day,
        **extra,
    )


def hm(timestamp: float | None) -> str:
    """A moment as local HH:MM, for the reasons stored with deferred messages."""
    if timestamp is None:
        return "?"
    return time.strftime("%H:%M", time.localtime(timestamp))


def short(text: str | None, limit: int = 60) -> str:
    """A reply cut to a length that fits a reason line."""
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


NO_EVENT = LaneEvent(LaneEventKind.NONE, "", "")

# A message that may already have been delivered (no answer after its final dot) waits at
# least this long, and four times its normal retry delay, before it is offered again: a
# server that answers 250 after the client has given up must not get it every few minutes.
POSSIBLE_DUPLICATE_DELAY = 3600.0
# The stored reason of a message that failed or waits because of the sending side (wrong
# credentials, TLS, the relay unreachable): fixed by the operator, then sent again when the
# campaign is resumed, never left failed.
SENDER_FAULT_REASONS = {
    SenderFault.AUTH: "authrefused",
    SenderFault.TLS: "tlsunavailable",
    SenderFault.CONNECT: "networkerror",
}
# Auth codes (RFC 4954): 530 required, 534 mechanism too weak, 535 refused, 538 needs TLS.
_AUTH_CODES = (530, 534, 535, 538)


def sender_fault(reply: Reply) -> str | None:
    """The sending side's fault in a reply, if any: what the transport saw, or an AUTH
    code (a 530 asking for STARTTLS first is about TLS)."""
    if reply.fault is not None:
        return reply.fault
    if reply.code in _AUTH_CODES:
        return SenderFault.TLS if "starttls" in reply.text.lower() else SenderFault.AUTH
    return None


def reply_outcome(
    message: dict[str, Any],
    reply: Reply,
    event: LaneEvent,
    now: float,
    *,
    ip: str,
    provider: str,
    retry_delays: tuple[float, ...] | list[float],
    max_age: float,
    lane_pause: float,
    rng: random.Random,
    day: str | None,
) -> Outcome:
    """The receiver's reply (or a network failure) turned into the message's new state.

    A permanent refusal about the recipient bounces it, one about the sender fails it;
    anything else defers it: after the delay the receiver named, else the profile's retry
    schedule (with jitter), and never before the lane's pause ends (``lane_pause`` seconds;
    inf for a lane out of rotation without an end). Past ``max_age`` it expires.
    """
    base: dict[str, Any] = {
        "ip": ip,
        "provider": provider,
        "code": reply.code,
        "reply": reply.text,
    }

    def outcome(state: MessageState, **extra: Any) -> Outcome:
        return new_outcome(message, state, now, attempted=True, day=day, **base, **extra)

    if reply.ok:
        return outcome(MessageState.SENT)
    if reply.protocol_error or reply.possible_duplicate:
        return _unanswered_outcome(
            message, reply, now, outcome, retry_delays=retry_delays, max_age=max_age, rng=rng
        )
    verdict = (
        classify_reply(reply.code, reply.text, provider, stage=reply.stage) if reply.code else None
    )
    if verdict is not None and reply.stage == "connect" and verdict.scope is Scope.RECIPIENT:
        # Refused before any recipient was named: about the server or us, not the address.
        verdict = replace(verdict, scope=Scope.LANE, suppress=False)
    fault = sender_fault(reply)
    if fault is not None:
        base["fault"] = fault
        if verdict is not None:
            verdict = replace(verdict, reason=SENDER_FAULT_REASONS[fault], suppress=False)
    details = (
        {
            "reason": verdict.reason,
            "rule": verdict.rule,
            "status": verdict.status,
            "scope": verdict.scope.value,
        }
        if verdict
        else {
            "reason": SENDER_FAULT_REASONS[fault] if fault else "networkerror",
            "rule": "connection",
            "scope": Scope.TRANSIENT.value,
        }
    )
    permanent = (
        verdict is not None and reply.code is not None and reply.code >= 500 and verdict.permanent
    )
    if permanent and verdict is not None and event.kind is not LaneEventKind.DEFER_RECIPIENT:
        if verdict.scope is Scope.RECIPIENT:
            return outcome(MessageState.BOUNCED, suppress=verdict.suppress, **details)
        if verdict.scope in (Scope.CAMPAIGN, Scope.MESSAGE):
            return outcome(MessageState.FAILED, **details)
    # Temporary, or a throttle/block about this sending IP: try again later.
    attempts = message["attempts"] + 1
    named = event.retry_after or (parse_reply_delay(reply.text) if reply.code else None)
    delay = float(named) if named else _retry_delay(message, retry_delays, rng)
    next_at = now + delay
    if event.pauses_lane and lane_pause != float("inf"):
        # Not before the lane may send again: the end of its pause, not of a slow period
        # that follows it (a slowed lane still sends). A lane out of rotation without an
        # end leaves the retry to the pool's other IPs.
        next_at = max(next_at, now + lane_pause)
    first = message.get("first_attempt_at") or now
    if next_at > first + max_age:
        return outcome(MessageState.EXPIRED, **details)
    kind, why = retry_reason(reply, event, attempts, next_at, ip=ip, provider=provider)
    return outcome(
        MessageState.DEFERRED, next_attempt_at=next_at, wait_kind=kind, wait_reason=why, **details
    )


def retry_reason(
    reply: Reply, event: LaneEvent, attempts: int, next_at: float, *, ip: str, provider: str
) -> tuple[str, str]:
    """(kind, reason) of a message a reply deferred: the lane's pause when the reply paused
    it, else the retry and the reply that caused it."""
    if event.pauses_lane:
        what = f"lane {ip} -> {provider} {event.kind.value}"
        return (
            f"{what} ({short(event.reason or reply.text, 40)})",
            f"{what} until {hm(event.until)} ({short(reply.text)})",
        )
    if reply.code is None:
        cause = short(reply.text, 40)
    else:
        status = parse_enhanced_status(reply.text)
        cause = f"{reply.code} {status}" if status else str(reply.code)
    return (
        f"retry after {cause}",
        f"retry {attempts} at {hm(next_at)} after {short(reply.text)}",
    )


def _retry_delay(
    message: dict[str, Any], retry_delays: tuple[float, ...] | list[float], rng: random.Random
) -> float:
    """The profile's retry schedule for this attempt, with jitter."""
    attempts = message["attempts"] + 1
    return retry_delays[min(attempts - 1, len(retry_delays) - 1)] * rng.uniform(0.85, 1.15)


def _unanswered_outcome(
    message: dict[str, Any],
    reply: Reply,
    now: float,
    outcome: Callable[..., Outcome],
    *,
    retry_delays: tuple[float, ...] | list[float],
    max_age: float,
    rng: random.Random,
) -> Outcome:
    """A protocol error (deferred on the retry schedule) or a possible duplicate (flagged,
    deferred for longer). Neither says anything about the recipient or the sender."""
    delay = _retry_delay(message, retry_delays, rng)
    if reply.possible_duplicate:
        details = {"reason": "possibleduplicate", "rule": "after-data"}
        delay = max(4 * delay, POSSIBLE_DUPLICATE_DELAY)
    else:
        details = {"reason": "protocolerror", "rule": "protocol"}
    flags = {"possible_duplicate": reply.possible_duplicate, "scope": Scope.TRANSIENT.value}
    first = message.get("first_attempt_at") or now
    if now + delay > first + max_age:
        return outcome(MessageState.EXPIRED, **details, **flags)
    what = "possible duplicate" if reply.possible_duplicate else "protocol error"
    attempt = message["attempts"] + 1
    return outcome(
        MessageState.DEFERRED,
        next_attempt_at=now + delay,
        wait_kind=f"retry after a {what}",
        wait_reason=f"retry {attempt} at {hm(now + delay)} after {short(reply.text)}",
        **details,
        **flags,
    )


def asked_back_to(message: dict[str, Any]) -> str | None:
    """The IP a receiver asked to try again from after a named delay ("greylisted for 2
    minutes"): greylisting keys on the client's address, so another IP waits all over again."""
    code = message.get("last_code")
    if message.get("ip") and code is not None and 400 <= code < 500:
        if parse_reply_delay(message.get("last_reply")) is not None:
            return str(message["ip"])
    return None
