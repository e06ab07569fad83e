"""Old events are pruned after TRACECAT_AUDIT_RETENTION_DAYS, by the app's clock: the app's
own job, with time moved forward rather than waited for. Both databases."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from pydantic import ValidationError

from tests.audit.support import events, names
from tests.conftest import Api
from tests.utils.flows import connect, start_connect
from tests.utils.polling import eventually
from tests.utils.time_travel import let_time_pass
from tracecat.audit.service import AuditLog
from tracecat.config import Settings, get_settings
from tracecat.db import Database
from tracecat.exceptions import SettingsError
from tracecat.resources import AUDIT_PRUNE_JOB

DAY = 86400


def _prune_runs(api: Api) -> float:
    """Finished runs of the pruning job in this process (every test app counts here)."""
    metrics = httpx.get(f"{api.url}/metrics").text
    pattern = rf'tracecat_job_runs_total{{job="{AUDIT_PRUNE_JOB}",outcome="ok"}} (\S+)'
    found = re.search(pattern, metrics)
    return float(found.group(1)) if found else 0.0


def _start_an_app_and_let_it_prune(api: Api) -> None:
    """An app's jobs start with a run each: a new app on the database and clock prunes once."""
    before = _prune_runs(api)
    with api.another_server():
        eventually(lambda: _prune_runs(api) > before)


def test_events_past_the_retention_are_pruned_by_the_job(api: Api) -> None:
    user = api.user("analyst@example.com")
    with api.browser() as browser:
        assert connect(browser, api.url, user, "alice@contoso.example").status_code == 200
    assert len(events(api.url, user)) == 3

    let_time_pass(api, 89 * DAY)
    _start_an_app_and_let_it_prune(api)
    assert len(events(api.url, user)) == 3  # inside the 90 days: kept

    let_time_pass(api, 2 * DAY)
    with api.browser() as browser:
        start_connect(browser, api.url, user)  # recorded at the moved time
    _start_an_app_and_let_it_prune(api)
    assert names(events(api.url, user)) == ["connect.started"]


def test_prune_deletes_only_what_is_older_than_the_retention(api: Api) -> None:
    user = api.user("analyst@example.com")
    with api.browser() as browser:
        start_connect(browser, api.url, user)

    async def prune(days: int) -> int:
        database = Database(api.database_url)
        try:
            return await AuditLog(database, api.clock, retention_days=days).prune()
        finally:
            await database.dispose()

    let_time_pass(api, 1.5 * DAY)
    assert asyncio.run(prune(2)) == 0
    assert asyncio.run(prune(1)) == 2  # api_key.created and connect.started
    assert events(api.url, user) == []


def test_the_retention_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRACECAT_AUDIT_RETENTION_DAYS", raising=False)
    assert Settings().tracecat_audit_retention_days == 90
    assert Settings(tracecat_audit_retention_days=7).tracecat_audit_retention_days == 7
    with pytest.raises(ValidationError):
        Settings(tracecat_audit_retention_days=0)
    monkeypatch.setenv("TRACECAT_AUDIT_RETENTION_DAYS", "0")
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError, match="TRACECAT_AUDIT_RETENTION_DAYS"):
            get_settings()
    finally:
        get_settings.cache_clear()
