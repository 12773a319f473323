"""A receiver that judges each sending IP by its reputation, as the big mailbox providers do.

Owns :class:`ReputationModel` (the documented parameters), :class:`IpReputation` (what the
receiver knows about one sending IP) and :class:`ReputationBook` (every IP's state and the
verdicts: throttle, block, inbox or spam placement), plus :class:`Folder` and
:class:`Verdict`.

How it works, per sending IP (the connecting client's address):

* A new IP starts at ``start`` reputation (0-100).
* The receiver accepts ``rate(reputation)`` recipients per ``window`` seconds:
  ``new_ip_rate`` at the starting reputation, doubled for every ``doubling`` points above it
  and halved for every ``doubling`` points below. Past that, each recipient is answered with
  ``throttle_reply`` and each such answer costs ``throttle_penalty``: sending into a throttle
  is what burns an IP.
* Hard bounces (5xx for unknown users) above ``bounce_threshold`` of the recent volume (the
  last ``bounce_volume`` recipients, judged once there are ``bounce_min_volume``) cost
  ``bounce_penalty`` each.
* Accepted mail earns ``earn`` points per ``new_ip_rate`` recipients (a new IP's full window
  of clean mail): clean mail slowly earns reputation back (up to 100), at the same pace
  whatever the scale of the receiver. An IP that has not been penalised for an hour also
  drifts back up toward ``start`` by ``recovery_per_hour`` points an hour.
* Accepted mail goes to the inbox at ``inbox_at`` and above, to spam below ``spam_below``;
  in between, to spam with a probability that grows linearly as reputation falls (drawn from
  a ``random.Random(seed)``, so a run is reproducible). Below ``block_below`` every recipient
  is refused with ``block_reply``.

Pure and clock-free: every method takes ``now``. Must not import aiosmtpd, the handler or the
servers, nor mailctl's cli, delivery, bounces or report.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from dataclasses import dataclass, field

from mailctl.errors import SimError
from mailctl.sim.replies import GENERIC_UNTRUSTED_IP, MICROSOFT_BLOCK_LIST, SimReply

_HOUR = 3600.0


class Folder(enum.StrEnum):
    """Where the receiver placed an accepted message."""

    INBOX = "inbox"
    SPAM = "spam"


class Verdict(enum.StrEnum):
    """Why the receiver refused a recipient on reputation grounds."""

    THROTTLED = "throttled"
    BLOCKED = "blocked"


@dataclass(frozen=True)
class ReputationModel:
    """The parameters of a reputation-based receiver (see the module docstring)."""

    start: float = 50.0  # reputation of an IP never seen (0-100)
    new_ip_rate: float = 60.0  # recipients accepted per window at the starting reputation
    window: float = 60.0  # seconds
    doubling: float = 25.0  # +this many points doubles the rate, -this many halves it
    throttle_penalty: float = 0.5  # per throttle reply (a sender ignoring the throttle)
    bounce_threshold: float = 0.02  # hard bounces above this share of recent volume ...
    bounce_penalty: float = 2.0  # ... cost this much each
    bounce_volume: int = 500  # recent volume: the last this many recipients
    bounce_min_volume: int = 50  # the share is judged from this many recipients on
    earn: float = 1.0  # per new_ip_rate accepted recipients
    recovery_per_hour: float = 2.0  # without penalties for an hour, back up toward start
    inbox_at: float = 35.0  # at or above: inbox
    spam_below: float = 20.0  # below: spam; in between: spam with a growing probability
    block_below: float = 5.0  # below: every recipient refused with block_reply
    throttle_reply: SimReply = GENERIC_UNTRUSTED_IP
    block_reply: SimReply = MICROSOFT_BLOCK_LIST
    seed: int = 0  # for spam placement in the grey zone

    def __post_init__(self) -> None:
        if not 0 <= self.start <= 100:
            raise SimError(f"reputation start must be within 0-100, got {self.start}")
        if self.new_ip_rate <= 0 or self.window <= 0 or self.doubling <= 0:
            raise SimError("reputation new_ip_rate, window and doubling must be positive")
        if not self.block_below <= self.spam_below <= self.inbox_at <= 100:
            raise SimError("reputation thresholds must satisfy block <= spam <= inbox <= 100")
        if self.bounce_volume < 1 or self.bounce_min_volume < 1:
            raise SimError("reputation bounce_volume and bounce_min_volume must be at least 1")

    def rate(self, reputation: float) -> float:
        """Recipients accepted per ``window`` at ``reputation``."""
        return self.new_ip_rate * 2 ** ((reputation - self.start) / self.doubling)

    def spam_chance(self, reputation: float) -> float:
        """The probability that an accepted message lands in spam at ``reputation``."""
        if reputation >= self.inbox_at:
            return 0.0
        if reputation < self.spam_below or self.inbox_at == self.spam_below:
            return 1.0
        return (self.inbox_at - reputation) / (self.inbox_at - self.spam_below)

    def describe(self) -> str:
        """The parameters in one paragraph, for ``--help`` and the sim's log."""
        return (
            f"new IPs start at reputation {self.start:g}/100 and may send "
            f"{self.new_ip_rate:g} recipients per {self.window:g}s (x2 per {self.doubling:g} "
            f"points more, /2 per {self.doubling:g} less); each throttle reply costs "
            f"{self.throttle_penalty:g}, each hard bounce above {self.bounce_threshold:.0%} "
            f"of the last {self.bounce_volume} recipients {self.bounce_penalty:g}, every "
            f"{self.new_ip_rate:g} accepted recipients earn {self.earn:g}; inbox from "
            f"{self.inbox_at:g}, spam below {self.spam_below:g}, blocked below {self.block_below:g}"
        )


@dataclass
class IpReputation:
    """What the receiver knows about one sending IP."""

    reputation: float
    accepted: deque[float] = field(default_factory=deque)  # acceptance times in the window
    recent: deque[bool] = field(default_factory=deque)  # last recipients: True = hard bounce
    recent_bounces: int = 0
    penalised_at: float | None = None
    touched_at: float | None = None


class ReputationBook:
    """Every sending IP's reputation and the receiver's verdicts. Not thread-safe: the sim's
    event loop owns it."""

    def __init__(self, model: ReputationModel) -> None:
        self.model = model
        self.ips: dict[str, IpReputation] = {}
        self._rng = random.Random(model.seed)

    def _ip(self, ip: str, now: float) -> IpReputation:
        entry = self.ips.get(ip)
        if entry is None:
            model = self.model
            entry = IpReputation(model.start, touched_at=now)
            self.ips[ip] = entry
        self._recover(entry, now)
        return entry

    def _recover(self, entry: IpReputation, now: float) -> None:
        model = self.model
        last = entry.touched_at if entry.touched_at is not None else now
        entry.touched_at = max(last, now)
        if entry.reputation >= model.start or model.recovery_per_hour <= 0:
            return
        quiet_since = max(last, (entry.penalised_at or last) + _HOUR)
        if now > quiet_since:
            gain = (now - quiet_since) / _HOUR * model.recovery_per_hour
            self._set(entry, min(model.start, entry.reputation + gain))

    @staticmethod
    def _set(entry: IpReputation, reputation: float) -> None:
        entry.reputation = min(100.0, max(0.0, reputation))

    def _penalise(self, entry: IpReputation, points: float, now: float) -> None:
        self._set(entry, entry.reputation - points)
        entry.penalised_at = now

    def reputation(self, ip: str, now: float) -> float:
        """The current reputation of ``ip`` (a new IP's is ``start``)."""
        return self._ip(ip, now).reputation

    def rate(self, ip: str, now: float) -> float:
        """Recipients ``ip`` may send per window now."""
        return self.model.rate(self._ip(ip, now).reputation)

    def admit(self, ip: str, now: float) -> Verdict | None:
        """Judge one recipient before the recipient checks: blocked, throttled (penalised),
        or None (go on; call `accepted` or `hard_bounce` with the outcome)."""
        model = self.model
        entry = self._ip(ip, now)
        if entry.reputation < model.block_below:
            return Verdict.BLOCKED
        while entry.accepted and entry.accepted[0] <= now - model.window:
            entry.accepted.popleft()
        if len(entry.accepted) + 1 > model.rate(entry.reputation):
            self._penalise(entry, model.throttle_penalty, now)
            return Verdict.THROTTLED
        return None

    def reply(self, verdict: Verdict) -> SimReply:
        return self.model.block_reply if verdict is Verdict.BLOCKED else self.model.throttle_reply

    def _remember(self, entry: IpReputation, bounced: bool) -> None:
        entry.recent.append(bounced)
        entry.recent_bounces += bounced
        if len(entry.recent) > self.model.bounce_volume:
            entry.recent_bounces -= entry.recent.popleft()

    def accepted(self, ip: str, now: float) -> None:
        """A recipient passed every check (counts toward the rate window)."""
        entry = self._ip(ip, now)
        entry.accepted.append(now)
        self._remember(entry, False)

    def hard_bounce(self, ip: str, now: float) -> None:
        """A recipient refused as unknown (5xx): penalised while bounces are above the
        threshold of recent volume."""
        model = self.model
        entry = self._ip(ip, now)
        self._remember(entry, True)
        volume = len(entry.recent)
        if (
            volume >= model.bounce_min_volume
            and entry.recent_bounces / volume > model.bounce_threshold
        ):
            self._penalise(entry, model.bounce_penalty, now)

    def place(self, ip: str, now: float) -> Folder:
        """Where an accepted message goes; it earns reputation for ``ip``."""
        model = self.model
        entry = self._ip(ip, now)
        chance = model.spam_chance(entry.reputation)
        spam = chance >= 1.0 or (chance > 0.0 and self._rng.random() < chance)
        self._set(entry, entry.reputation + model.earn / model.new_ip_rate)
        return Folder.SPAM if spam else Folder.INBOX

    def reputations(self) -> dict[str, float]:
        """Each sending IP's reputation as last judged, by IP."""
        return {ip: entry.reputation for ip, entry in sorted(self.ips.items())}
