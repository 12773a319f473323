"""What every part of one send run shares: its campaigns, options, clock and stop flags.

The engine builds one `SendContext`; claim, route, dispatch and record read it. Imports
the domain and the store, never the CLI (nothing here prints: messages go to `on_event`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mailctl.clock import Clock
from mailctl.config.campaign import Campaign
from mailctl.config.profiles import Profile
from mailctl.delivery.store_thread import StoreThread
from mailctl.message.render import Renderer
from mailctl.reputation.budget import WarmupBudget
from mailctl.reputation.scheduler import Scheduler
from mailctl.store.base import Store


@dataclass(frozen=True)
class SendOptions:
    limit: int | None = None
    max_time: float | None = None
    # Wait for deferred messages that fall due before --max-time ends (default: only when
    # a max time is given; without one, a run ends when all remaining work is deferred).
    wait: bool | None = None
    claim_batch: int = 256
    commit_interval: float = 0.25
    stop_grace: float = 30.0
    heartbeat_interval: float = 5.0
    queue_per_connection: int = 64
    # Render in a separate process when a run has at least this many messages due and the
    # machine has a second core: the event loop then spends its core on SMTP alone.
    render_process_threshold: int = 2000


@dataclass
class CampaignJob:
    """One campaign in this run, with everything needed to send it."""

    campaign_id: int
    campaign: Campaign
    profile: Profile
    pool: str
    renderer: Renderer
    transactional: bool = False

    @property
    def name(self) -> str:
        return self.campaign.name

    @property
    def max_age(self) -> float:
        return self.campaign.max_age or self.profile.max_age


EventCallback = Callable[[str], None]


class SendContext:
    """The run's shared state. ``stop``: no more claims (a first Ctrl-C); ``force``: cut
    in-flight work too (a second one); ``wake``: something the main loop waits for changed."""

    def __init__(
        self,
        store: Store,
        jobs: Sequence[CampaignJob],
        *,
        run_id: int,
        clock: Clock,
        options: SendOptions,
        rng: random.Random,
        scheduler: Scheduler,
        budget: WarmupBudget,
        on_event: EventCallback | None,
    ) -> None:
        self.store = store
        # Claims and outcome commits, off the event loop, while the run lasts (PostgreSQL).
        self.store_thread: StoreThread | None = None
        self.jobs = {job.campaign_id: job for job in jobs}
        # Transactional campaigns are claimed first when both kinds run together.
        self.claim_order = [
            job.campaign_id for job in sorted(jobs, key=lambda j: (not j.transactional, j.name))
        ]
        self.run_id = run_id
        self.clock = clock
        self.options = options
        self.rng = rng
        self.scheduler = scheduler
        self.budget = budget
        self.on_event = on_event
        self.stop = asyncio.Event()
        self.force = False
        self.wake = asyncio.Event()
        self.stopped: dict[int, str] = {}  # campaign id -> why a breaker or a rule stopped it

    def say(self, message: str) -> None:
        if self.on_event is not None:
            self.on_event(message)

    def active(self) -> list[int]:
        """The run's campaigns still sending, in claim order."""
        return [cid for cid in self.claim_order if cid not in self.stopped]

    def halted(self, campaign_id: int) -> bool:
        """No new attempt for this campaign: the run or the campaign was stopped."""
        return self.stop.is_set() or campaign_id in self.stopped

    def stop_campaign(self, campaign_id: int, why: str) -> None:
        if campaign_id in self.stopped:
            return
        self.stopped[campaign_id] = why
        self.store.set_campaign_status(campaign_id, "stopped", why, now=self.clock.now())
        self.say(f"campaign {self.jobs[campaign_id].name} stopped: {why}")
        self.wake.set()


def hms(timestamp: float | None) -> str:
    """A moment as local HH:MM:SS, for messages."""
    if timestamp is None:
        return "?"
    return time.strftime("%H:%M:%S", time.localtime(timestamp))
