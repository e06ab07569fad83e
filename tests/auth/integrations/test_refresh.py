"""Tokens that never go stale: refresh on use, the sweeper, single flight across processes,
and the failure states, against the emulator as a real server on both databases.

Nothing here waits: `let_time_pass` moves the emulator's clock and the app's (`api.clock`),
and the refresher's retry pauses are recorded on that clock instead of slept. Sweeps run one
pass at a time, but for one test of the live sweeper.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.conftest import Api
from tests.utils.flows import ApiUser, connect
from tests.utils.polling import eventually
from tests.utils.server import ServeProcess
from tests.utils.time_travel import MovableClock, let_time_pass
from tracecat.auth.integrations.microsoft import MicrosoftOAuthProvider
from tracecat.auth.integrations.service import IntegrationService
from tracecat.db import Database

BASE = "/auth/integrations/microsoft"
MS_USER = "alice@contoso.example"
HOUR = 3600
# The refresher's pauses between its three attempts at a refresh Microsoft answers with an
# outage (REFRESH_RETRY_DELAYS).
RETRY_PAUSES = [0.5, 1.5]


def status(api: Api, user: ApiUser, base_url: str | None = None) -> dict:
    response = httpx.get(f"{base_url or api.url}{BASE}/status", headers=user.headers)
    assert response.status_code == 200
    return response.json()


def connect_inside_margin(api: Api, base_url: str | None = None) -> ApiUser:
    """A connected user whose access token is valid but inside the 300 s refresh margin;
    tokens issued afterwards last an hour again."""
    user = api.user("analyst@example.com")
    api.control("PATCH", "/config", json={"access_token_lifetime": 200})
    with httpx.Client() as browser:
        assert connect(browser, base_url or api.url, user, MS_USER).status_code == 200
    api.control("PATCH", "/config", json={"access_token_lifetime": 3599})
    return user


def test_token_inside_the_margin_is_refreshed_before_the_call(api: Api) -> None:
    user = connect_inside_margin(api)
    before = status(api, user)
    assert before["status"] == "connected"
    assert datetime.fromisoformat(before["expires_at"]) < datetime.now(UTC) + timedelta(seconds=300)

    teams = httpx.get(f"{api.url}{BASE}/teams", headers=user.headers)
    assert teams.status_code == 200
    assert api.refresh_outcomes() == {"success": 1}
    graph = api.control("GET", "/stats").json()["graph_requests"]
    assert not any("401" in statuses for statuses in graph.values())  # no failed call first

    after = status(api, user)
    assert datetime.fromisoformat(after["expires_at"]) > datetime.now(UTC) + timedelta(minutes=50)
    assert before["last_refreshed_at"] is None  # connected, never refreshed
    assert datetime.fromisoformat(after["last_refreshed_at"]) > datetime.now(UTC) - timedelta(
        minutes=1
    )
    assert after["refresh_failures"] == 0


def test_short_lived_tokens_are_not_refreshed_on_every_call(api: Api) -> None:
    """An identity provider whose tokens live less than the margin: refreshed once, then the
    fresh token is used while it is valid instead of asking again on every call."""
    user = connect_inside_margin(api)
    api.control("PATCH", "/config", json={"access_token_lifetime": 200})
    for _ in range(3):
        assert httpx.get(f"{api.url}{BASE}/teams", headers=user.headers).status_code == 200
    assert api.refresh_outcomes() == {"success": 1}


def test_rotated_refresh_token_is_stored(api: Api) -> None:
    api.control("PATCH", "/config", json={"refresh_token_rotation": "strict"})
    user = connect_inside_margin(api)
    assert httpx.get(f"{api.url}{BASE}/teams", headers=user.headers).status_code == 200
    # Strict rotation: the first refresh token is now dead; a second refresh only works
    # with the new one, which must have been stored.
    api.control("PATCH", "/config", json={"access_token_lifetime": 200})
    api.control("POST", f"/users/{MS_USER}/expire-tokens")
    assert httpx.get(f"{api.url}{BASE}/teams", headers=user.headers).status_code == 200
    assert api.refresh_outcomes() == {"success": 2}
    assert status(api, user)["status"] == "connected"


@pytest.mark.parametrize("aadsts", [50173, 700082])
def test_revoked_grant_needs_reconnect(api: Api, aadsts: int) -> None:
    api.control("PATCH", "/config", json={"revoked_error_code": aadsts})
    user = connect_inside_margin(api)
    api.control("POST", f"/users/{MS_USER}/revoke")
    response = httpx.get(f"{api.url}{BASE}/teams", headers=user.headers)
    assert response.status_code == 401
    detail = response.json()["detail"]
    assert "GET /auth/integrations/microsoft/connect" in detail and "invalid_grant" in detail
    current = status(api, user)
    assert current["status"] == "reauthorization_required" and current["connected"] is False
    # No hammering: later calls answer at once without asking Microsoft again.
    count = api.refreshes()
    assert httpx.get(f"{api.url}{BASE}/teams", headers=user.headers).status_code == 401
    assert api.refreshes() == count
    with httpx.Client() as browser:
        assert connect(browser, api.url, user, MS_USER).status_code == 200
    assert status(api, user)["status"] == "connected"
    assert httpx.get(f"{api.url}{BASE}/teams", headers=user.headers).status_code == 200


@pytest.mark.parametrize(
    "fault",
    [{"status": 503}, {"status": 429, "retry_after": 1}, {"status": 500, "delay_seconds": 0.2}],
    ids=["503", "429", "500"],
)
def test_outage_with_a_valid_token_breaks_nothing(api: Api, fault: dict) -> None:
    user = connect_inside_margin(api)
    api.control("POST", "/faults", json={"target": "token", "count": 100, **fault})
    response = httpx.get(f"{api.url}{BASE}/teams", headers=user.headers)
    assert response.status_code == 200
    assert api.clock.pauses == RETRY_PAUSES  # three attempts, with the pauses between them
    current = status(api, user)
    assert current["status"] == "connected" and current["refresh_failures"] >= 1
    assert api.refresh_outcomes().get("success", 0) == 0  # it really was refused

    api.control("DELETE", "/faults")
    assert httpx.get(f"{api.url}{BASE}/teams", headers=user.headers).status_code == 200
    recovered = status(api, user)
    assert recovered["refresh_failures"] == 0
    assert datetime.fromisoformat(recovered["expires_at"]) > datetime.now(UTC) + timedelta(
        minutes=50
    )


def test_outage_with_an_expired_token_answers_503_and_recovers(api: Api) -> None:
    user = api.user("analyst@example.com")
    with httpx.Client() as browser:
        assert connect(browser, api.url, user, MS_USER).status_code == 200
    let_time_pass(api, HOUR)  # the token (3599 s) has expired, for us and for Graph
    api.control("POST", "/faults", json={"target": "token", "status": 503, "count": 100})
    response = httpx.get(f"{api.url}{BASE}/teams", headers=user.headers)
    assert response.status_code == 503
    assert api.clock.pauses == RETRY_PAUSES
    assert int(response.headers["Retry-After"]) > 0
    assert "retry later" in response.json()["detail"]
    current = status(api, user)
    assert current["status"] == "expired" and current["connected"] is True
    assert current["is_expired"] is True

    api.control("DELETE", "/faults")
    assert httpx.get(f"{api.url}{BASE}/teams", headers=user.headers).status_code == 200
    assert status(api, user)["status"] == "connected"


def test_metrics_count_refreshes(api: Api) -> None:
    user = connect_inside_margin(api)
    assert httpx.get(f"{api.url}{BASE}/teams", headers=user.headers).status_code == 200
    metrics = httpx.get(f"{api.url}/metrics").text
    assert 'tracecat_token_refreshes_total{outcome="refreshed"}' in metrics
    assert "tracecat_graph_requests_total" in metrics
    assert user.api_key not in metrics


def sweep(api: Api, clock: MovableClock | None = None) -> int:
    """One pass of the token sweep, as the app's background job runs it, on the app's
    database and settings and on `clock` (by default the app's); returns how many grants
    were due."""

    async def one_pass() -> int:
        database = Database.from_settings(api.settings)
        provider = MicrosoftOAuthProvider(api.settings)
        service = IntegrationService(database, api.settings, provider, clock=clock or api.clock)
        try:
            return await service.refresh_due()
        finally:
            provider.close()
            await database.dispose()

    return asyncio.run(one_pass())


def test_sweep_refreshes_idle_tokens_and_leaves_fresh_ones(api: Api) -> None:
    user = connect_inside_margin(api)
    assert sweep(api) == 1
    assert api.refresh_outcomes() == {"success": 1}
    current = status(api, user)
    assert datetime.fromisoformat(current["expires_at"]) > datetime.now(UTC) + timedelta(minutes=50)
    assert sweep(api) == 0  # further sweeps leave a fresh token alone
    assert api.refreshes() == 1


def test_sweep_on_a_later_clock_refreshes_what_it_finds_due(api: Api) -> None:
    """The sweep picks grants by its clock and the refresh it starts judges them by the same
    clock: a token due then is refreshed, not handed back as still fresh."""
    user = api.user("analyst@example.com")
    with httpx.Client() as browser:
        assert connect(browser, api.url, user, MS_USER).status_code == 200  # 3599 s
    assert sweep(api) == 0  # an hour-long token is not due now
    later = MovableClock()
    later.advance(HOUR - 200)  # 199 s left: inside the 300 s margin
    assert sweep(api, later) == 1
    assert api.refresh_outcomes() == {"success": 1}  # really refreshed, not "reused"
    current = status(api, user)
    expires_at = datetime.fromisoformat(current["expires_at"])
    # Stamped on the sweep's clock: an hour from its "now", not from the real time.
    assert expires_at > later.now() + timedelta(minutes=50)
    refreshed_at = datetime.fromisoformat(current["last_refreshed_at"])
    assert abs(refreshed_at - later.now()) < timedelta(minutes=1)
    assert sweep(api, later) == 0  # and, on that clock, it is fresh again


def test_sweep_leaves_revoked_grants_to_the_user(api: Api) -> None:
    """A revoked grant is recorded as such, without failing the sweep; later passes do not
    ask Microsoft again (only the user reconnecting can help)."""
    user = connect_inside_margin(api)
    api.control("POST", f"/users/{MS_USER}/revoke")
    assert sweep(api) == 1
    assert status(api, user)["status"] == "reauthorization_required"
    count = api.refreshes()
    assert sweep(api) == 0
    assert api.refreshes() == count


@pytest.fixture
def sweeping_server(api: Api) -> Iterator[str]:
    with api.another_server(tracecat_refresh_interval_seconds=1) as url:
        yield url


def test_live_server_sweeps_in_the_background(api: Api, sweeping_server: str) -> None:
    # Nothing but the server's own job (every second) calls Microsoft here.
    user = connect_inside_margin(api, sweeping_server)
    eventually(api.refreshes, timeout=30)
    assert api.refresh_outcomes() == {"success": 1}
    current = status(api, user)
    assert datetime.fromisoformat(current["expires_at"]) > datetime.now(UTC) + timedelta(minutes=50)


@pytest.fixture
def two_processes(api: Api) -> Iterator[list[ServeProcess]]:
    env = api.serve_environment()
    processes = [ServeProcess(env), ServeProcess(env)]
    try:
        yield [p.wait_ready() for p in processes]
    finally:
        for process in processes:
            process.stop()


def test_stampede_across_processes_refreshes_once(
    api: Api, two_processes: list[ServeProcess]
) -> None:
    # Strict rotation: a second refresh with the same token would fail and log the user out.
    api.control("PATCH", "/config", json={"refresh_token_rotation": "strict"})
    user = connect_inside_margin(api, two_processes[0].url)
    api.control("PATCH", "/config", json={"throttling": {"enabled": False}})

    def call(i: int) -> int:
        url = two_processes[i % 2].url
        return httpx.get(f"{url}{BASE}/teams", headers=user.headers, timeout=60).status_code

    with ThreadPoolExecutor(max_workers=24) as pool:
        codes = list(pool.map(call, range(24)))
    assert codes == [200] * 24
    assert api.refresh_outcomes() == {"success": 1}
    assert status(api, user, two_processes[1].url)["status"] == "connected"


def test_wrong_client_secret_is_reported_and_the_grant_kept(api: Api) -> None:
    """Our own misconfiguration is not the user's fault: the grant is kept, a still-valid
    token is used, and once it has expired the answer names the setting to fix."""
    user = connect_inside_margin(api)  # valid, but due for a refresh
    with api.another_server(microsoft_client_secret="not-the-secret") as url:
        # The refresh is refused; the token still works and is used.
        assert httpx.get(f"{url}{BASE}/teams", headers=user.headers).status_code == 200
        let_time_pass(api, 300)  # past the token's 200 s
        expired = httpx.get(f"{url}{BASE}/teams", headers=user.headers)
    assert expired.status_code == 502
    assert "MICROSOFT_CLIENT_SECRET" in expired.json()["detail"]
    current = status(api, user)
    assert current["status"] == "expired" and current["refresh_failures"] >= 2
    # The right secret renews the same grant: no reconnect was needed.
    assert httpx.get(f"{api.url}{BASE}/teams", headers=user.headers).status_code == 200
    assert status(api, user)["status"] == "connected"
