"""Background jobs: they keep running through failures, on an injected clock."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from tracecat.auth.integrations.service import IntegrationService
from tracecat.config import Settings
from tracecat.crypto import generate_key
from tracecat.db import Database
from tracecat.jobs import Job, JobRunner


class FakeClock:
    """A sleep that returns at once and records how long it was asked to wait."""

    def __init__(self, stop_after: int) -> None:
        self.pauses: list[float] = []
        self.stop_after = stop_after
        self.done = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        if len(self.pauses) >= self.stop_after:
            self.done.set()
            await asyncio.Event().wait()  # park here until the runner is stopped
        await asyncio.sleep(0)


async def test_a_failing_job_is_logged_and_runs_again(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) % 2:
            raise ConnectionError("database went away")

    clock = FakeClock(stop_after=5)
    runner = JobRunner(sleep=clock.sleep, random=lambda: 0.5)
    runner.add(Job("flaky", 60, flaky, jitter=0.2))
    runner.start()
    await asyncio.wait_for(clock.done.wait(), 10)
    await runner.stop()
    assert len(runs) == 5  # failures did not end the loop
    assert clock.pauses == [66.0] * 5  # 60 s stretched by jitter * random
    failures = [r for r in caplog.records if "Background job flaky failed" in r.getMessage()]
    assert len(failures) == 3


async def test_stop_cancels_a_running_job() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    runner = JobRunner()
    runner.add(Job("forever", 1, forever))
    runner.start()
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.wait_for(runner.stop(), 10)


def test_an_interval_must_be_positive() -> None:
    async def nothing() -> None:
        return None

    with pytest.raises(ValueError, match="positive"):
        JobRunner().add(Job("never", 0, nothing))


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
async def test_the_token_sweep_survives_a_database_error(
    backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unusable = {
        "postgresql": "postgresql://root@127.0.0.1:1/nowhere",  # nothing listens there
        "sqlite": f"sqlite:///{tmp_path}",  # a directory, not a database file
    }[backend]
    settings = Settings(
        database_url=unusable, tracecat_data_dir=tmp_path, tracecat_encryption_keys=[generate_key()]
    )
    database = Database.from_settings(settings)
    service = IntegrationService(database, settings)
    clock = FakeClock(stop_after=3)
    runner = JobRunner(sleep=clock.sleep)
    runner.add(Job("token-sweep", 60, service.refresh_due))
    caplog.set_level(logging.ERROR, logger="tracecat.jobs")
    try:
        runner.start()
        await asyncio.wait_for(clock.done.wait(), 30)
        await runner.stop()
    finally:
        await database.dispose()
    failures = [r for r in caplog.records if "token-sweep failed" in r.getMessage()]
    assert len(failures) == 3  # every pass failed, and the sweep went on


async def test_wake_runs_a_job_now_instead_of_after_its_pause() -> None:
    runs: list[int] = []
    ran = asyncio.Event()

    async def count() -> None:
        runs.append(len(runs))
        ran.set()

    runner = JobRunner()
    runner.add(Job("hourly", 3600, count))
    runner.start()
    try:
        await asyncio.wait_for(ran.wait(), 10)  # the first run, at start
        ran.clear()
        runner.wake("hourly")
        await asyncio.wait_for(ran.wait(), 10)  # long before the hour is up
        runner.wake("no-such-job")  # nothing to wake: no error
    finally:
        await runner.stop()
    assert runs == [0, 1]


async def test_stopping_lets_a_run_under_way_finish_and_ends_pauses_at_once() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[str] = []

    async def delivering() -> None:
        started.set()
        await release.wait()  # a webhook POST the target is still answering
        finished.append("delivered")

    async def idle() -> None:
        finished.append("idle ran")

    runner = JobRunner()
    runner.add(Job("deliveries", 3600, delivering))
    runner.add(Job("sweep", 3600, idle))
    runner.start()
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.sleep(0)  # the idle job has run and is pausing for an hour
    stopping = asyncio.create_task(runner.stop(grace=30))
    await asyncio.sleep(0)
    assert not stopping.done()  # it waits for the delivery, not for the hour
    release.set()
    await asyncio.wait_for(stopping, 10)
    assert finished == ["idle ran", "delivered"]


async def test_a_run_longer_than_the_grace_is_cut_off(caplog: pytest.LogCaptureFixture) -> None:
    started = asyncio.Event()

    async def stuck() -> None:
        started.set()
        await asyncio.Event().wait()

    runner = JobRunner()
    runner.add(Job("stuck", 3600, stuck))
    runner.start()
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.wait_for(runner.stop(grace=0.05), 10)
    assert "Background job job:stuck cut off at shutdown" in caplog.text
