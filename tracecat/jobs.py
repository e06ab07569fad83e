"""Background work: named periodic jobs that the app's lifespan starts and stops.

Today the token sweep; next subscription renewal, catch-up and webhook deliveries. One place
for intervals, jitter, error logging and metrics: a job that fails is logged and retried at
its next tick, never ended, so a database blip does not silently stop the sweep.

Usage::

    jobs = JobRunner()
    jobs.add(Job("token-sweep", 60, service.refresh_due))
    jobs.start()          # inside a running event loop
    ...
    await jobs.stop(20)   # runs under way may finish for 20 s; pauses end at once
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Histogram

logger = logging.getLogger(__name__)

JOB_RUNS = Counter(
    "tracecat_job_runs", "Background job runs by job and outcome (ok, failed).", ["job", "outcome"]
)
JOB_SECONDS = Histogram("tracecat_job_seconds", "Duration of background job runs.", ["job"])


@dataclass(frozen=True)
class Job:
    """`run` every `interval` seconds, each pause stretched by up to `jitter` of itself so
    several instances started together drift apart instead of sweeping in lockstep."""

    name: str
    interval: float
    run: Callable[[], Awaitable[Any]]
    jitter: float = 0.1


@dataclass
class JobRunner:
    # Injected in tests: a fake sleep advances time without waiting.
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    random: Callable[[], float] = random.random
    _jobs: list[Job] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _wakes: dict[str, asyncio.Event] = field(default_factory=dict)
    _running: set[str] = field(default_factory=set)  # jobs inside a run, not a pause
    _stopping: bool = False

    def add(self, job: Job) -> None:
        if job.interval <= 0:
            raise ValueError(f"job {job.name}: the interval must be positive")
        self._jobs.append(job)
        self._wakes[job.name] = asyncio.Event()

    def wake(self, name: str) -> None:
        """Run job `name` now instead of at the end of its pause (new work just arrived in
        this process; other instances find it at their next tick). Unknown names: nothing."""
        event = self._wakes.get(name)
        if event is not None:
            event.set()

    @property
    def names(self) -> list[str]:
        return [job.name for job in self._jobs]

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(job), name=f"job:{job.name}") for job in self._jobs
        ]

    async def stop(self, grace: float = 0) -> None:
        """End every job: those pausing at once, those in a run once it is over, or after
        `grace` seconds (a delivery cut off mid-POST would be sent again after a restart)."""
        self._stopping = True
        running = []
        for task in self._tasks:
            if task.get_name().removeprefix("job:") in self._running and grace > 0:
                running.append(task)
            else:
                task.cancel()
        if running:
            _, late = await asyncio.wait(running, timeout=grace)
            for task in late:
                logger.warning("Background job %s cut off at shutdown", task.get_name())
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def run_once(self, job: Job) -> bool:
        """One run, timed and counted; False when it failed (logged, not raised)."""
        started = time.perf_counter()
        try:
            await job.run()
        except Exception:
            JOB_RUNS.labels(job=job.name, outcome="failed").inc()
            logger.exception("Background job %s failed; next try in %s s", job.name, job.interval)
            return False
        finally:
            JOB_SECONDS.labels(job=job.name).observe(time.perf_counter() - started)
        JOB_RUNS.labels(job=job.name, outcome="ok").inc()
        return True

    async def _loop(self, job: Job) -> None:
        wake = self._wakes[job.name]
        while not self._stopping:
            wake.clear()  # what arrives from here on is seen by this run or wakes the next
            self._running.add(job.name)
            try:
                await self.run_once(job)
            finally:
                self._running.discard(job.name)
            if not self._stopping:
                await self._pause(job, wake)

    async def _pause(self, job: Job, wake: asyncio.Event) -> None:
        """The job's interval (with jitter), cut short by `wake`."""
        pause = asyncio.ensure_future(self.sleep(job.interval * (1 + job.jitter * self.random())))
        woken = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait({pause, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pause, woken):
                task.cancel()
