"""One send run around the engine: the database's send lock, recovery of messages an earlier
run left in flight, campaign preparation, the embedded sandbox, SIGINT/SIGTERM as a clean
stop, and the run's bookkeeping (start, finish, summary totals).

It reports through callbacks and never prints. Must not import typer, rich or mailctl.cli.

    with SendRun(store, on_warning=warn, on_info=info) as run:
        run.prepare_campaign(path, profiles, update=False)  # or run.prepare_active(profiles)
        summary = run.send(options, on_progress=show)
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from pathlib import Path
from typing import Any, Self

from mailctl.clock import Clock, SystemClock
from mailctl.config.campaign import Campaign
from mailctl.config.profiles import Profile, ProfilesFile, TransportKind
from mailctl.delivery.campaigns import Prepared, active_jobs, prepare
from mailctl.delivery.context import CampaignJob, SendOptions
from mailctl.delivery.early import EarlyConnection, connect_early
from mailctl.delivery.engine import Engine
from mailctl.delivery.record import RunSummary
from mailctl.store.base import Store

Notice = Callable[[str], None]
# total messages, messages done, sent per second, one dict per lane (Engine.lane_rows)
# run total, counts by outcome (sent, deferred, bounced, failed, expired, suppressed), lane rows
ProgressCallback = Callable[[int, dict[str, int], list[dict[str, Any]]], None]
# bytes read, rows imported: while a campaign's CSV loads
LoadCallback = Callable[[int, int], None]


def _ignore(_: str) -> None:
    pass


class SendRun:
    """One run of the send loop over a store the caller opened.

    Entering takes the send lock (LockedError when another run holds it) and returns
    messages an earlier run left in `sending` to the queue (counted in `recovered`).
    """

    def __init__(
        self,
        store: Store,
        *,
        on_warning: Notice = _ignore,
        on_info: Notice = _ignore,
        clock: Clock | None = None,
        host: str | None = None,
    ) -> None:
        self.store = store
        # The sending host this run stands for (send --host; default the machine's name).
        self.host = host or socket.gethostname()
        self.on_warning = on_warning
        self.on_info = on_info
        self.clock = clock or SystemClock()
        self.now = 0.0
        self.recovered = 0
        self.prepared: list[Prepared] = []
        self.early: EarlyConnection | None = None
        self._exit = ExitStack()

    def _engine_event(self, message: str) -> None:
        """The send loop's warnings (cleartext AUTH allowed by the profile) go to
        ``on_warning``; its other notices are for the progress display only."""
        if message.startswith("warning: "):
            self.on_warning(message.removeprefix("warning: "))

    def __enter__(self) -> Self:
        self._exit.enter_context(self.store.send_lock(self.host))
        self.now = self.clock.now()
        self.recovered = self.store.recover_interrupted()
        if self.recovered:
            self.on_warning(
                f"{self.recovered} messages were in flight when an earlier run died; they are "
                "queued again and may reach their recipients twice"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    def prepare_campaign(
        self,
        campaign_file: Path,
        profiles: ProfilesFile,
        *,
        update: bool,
        on_progress: LoadCallback | None = None,
    ) -> None:
        """Load one campaign file, import its CSV and queue its new recipients. A run sure
        to send over a relay connects to it meanwhile (early.py)."""
        self.prepared = [
            prepare(
                self.store,
                campaign_file,
                profiles,
                update=update,
                now=self.now,
                on_progress=on_progress,
                before_import=self._connect_early,
            )
        ]

    def _connect_early(self, campaign: Campaign, profile: Profile, pool: str) -> None:
        self.early = connect_early(self.store, campaign, profile, pool, self.now, self.clock.now)
        if self.early is not None:
            self._exit.callback(self.early.discard)  # a socket the run did not take

    def prepare_active(self, profiles: ProfilesFile) -> None:
        """Every active campaign (`send --all`); one that cannot load is a warning."""
        self.prepared, problems = active_jobs(self.store, profiles, now=self.now)
        for problem in problems:
            self.on_warning(problem)

    def _first_rejects(self, file: str) -> bool:
        """Whether this version of `file` (path, size, modification time) has not had its
        rejected rows reported yet: cron runs repeat an import, not its warning."""
        try:
            st = os.stat(file)
        except OSError:
            return True
        key = f"rejected rows: {os.path.abspath(file)} {st.st_size} {st.st_mtime_ns}"
        return self.store.first_notice(key, self.now)

    def _jobs(self) -> tuple[list[CampaignJob], list[str]]:
        """The campaigns that may send, and a note for each one held back by its status."""
        jobs, held = [], []
        for item in self.prepared:
            row = self.store.get_campaign(item.job.name)
            if (
                item.imported is not None
                and item.imported.invalid
                and self._first_rejects(item.imported.file)
            ):
                self.on_warning(
                    f"{item.imported.invalid} rows of {item.imported.file} were rejected "
                    "(see `mailctl recipients import --rejects FILE`)"
                )
            if row is not None and row["status"] != "active" and row["status"] != "done":
                self.on_info(f"campaign {item.job.name} is {row['status']}: not sending")
                held.append(f"campaign {item.job.name} is {row['status']}")
                continue
            jobs.append(item.job)
        return jobs, held

    def send(
        self,
        options: SendOptions,
        *,
        on_progress: ProgressCallback | None = None,
        live: AbstractContextManager[Any] | None = None,
    ) -> RunSummary:
        """Send the prepared campaigns until done or stopped; `live` (a progress display) is
        entered while the loop runs. Records the run and returns its summary."""
        jobs, held = self._jobs()
        queued = sum(p.queued for p in self.prepared)
        suppressed = sum(p.suppressed for p in self.prepared)
        if not jobs:
            # A paused campaign has mail to send: say why it is not sent, not "nothing".
            summary = RunSummary(
                campaigns=[p.job.name for p in self.prepared],
                stop_reason="; ".join(held) or "nothing to send",
            )
            summary.queued, summary.suppressed = queued, suppressed
            return summary
        total = sum(self.store.remaining(job.campaign_id) for job in jobs)
        run_id = self.store.start_run(os.getpid(), self.host, self.now)
        summary = asyncio.run(
            self._loop(jobs, run_id, options, total, on_progress, live or nullcontext())
        )
        summary.queued = queued
        summary.suppressed += suppressed
        summary.recovered = self.recovered
        self.store.finish_run(run_id, self.clock.now(), summary.stop_reason, self.recovered)
        return summary

    async def _loop(
        self,
        jobs: list[CampaignJob],
        run_id: int,
        options: SendOptions,
        total: int,
        on_progress: ProgressCallback | None,
        live: AbstractContextManager[Any],
    ) -> RunSummary:
        sandbox = None
        sandbox_jobs = [j for j in jobs if j.profile.transport is TransportKind.SANDBOX]
        if sandbox_jobs:
            outbox = sandbox_jobs[0].profile.outbox or Path("outbox")
            # Imported here, not at the top: the embedded server (aiosmtpd) is a heavy import
            # that only the sandbox profile needs, and cron pays every import on every run.
            from mailctl.delivery.sandbox import Sandbox

            sandbox = Sandbox(outbox)
            await sandbox.start()
            self.on_info(f"sandbox: delivering to an embedded SMTP server, Maildir {outbox}/")

        def progress(engine: Engine) -> None:
            if on_progress is None:
                return
            s = engine.summary
            counts = {
                "sent": s.sent,
                "deferred": s.deferred,
                "bounced": s.bounced,
                "failed": s.failed,
                "expired": s.expired,
                "suppressed": s.suppressed,
            }
            on_progress(total, counts, engine.lane_rows())

        engine = Engine(
            self.store,
            jobs,
            run_id=run_id,
            clock=self.clock,
            options=options,
            sandbox_port=sandbox.port if sandbox else None,
            on_progress=progress,
            on_event=self._engine_event,
            early=self.early,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, engine.request_stop)

        async def refresh() -> None:
            # The engine reports progress as it commits outcomes; this keeps the display
            # current while the run waits for deferred work (wall time: the display's clock).
            while True:
                await asyncio.sleep(0.25)
                progress(engine)

        refresher = asyncio.create_task(refresh())
        try:
            with live:
                return await engine.run()
        finally:
            refresher.cancel()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if sandbox is not None:
                await sandbox.close()
