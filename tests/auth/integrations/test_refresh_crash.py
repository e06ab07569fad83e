"""SIGKILL during a refresh never leaves a grant unusable (both databases).

Microsoft's token endpoint is slowed by the emulator so a refresh is under way for a second;
the `serve` process is killed at several moments of it: before the request leaves, while
Microsoft holds it, as the answer arrives, after it was stored. Entra ID keeps the previous
refresh token valid (the emulator's default rotation), so whichever of the old or the new
token the database holds must still refresh; half of either would not.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

import httpx
import pytest

from tests.conftest import Api
from tests.utils.flows import connect, create_user
from tests.utils.server import ServeProcess

MS_USER = "alice@contoso.example"
TEAMS = "/auth/integrations/microsoft/teams"
TOKEN_DELAY = 1.0
HOUR = 3600


@pytest.mark.parametrize("kill_after", [0.0, 0.4, TOKEN_DELAY + 0.05, TOKEN_DELAY + 0.5])
def test_a_refresh_killed_at_any_moment_leaves_a_usable_grant(
    api: Api, upgraded_url: str, kill_after: float
) -> None:
    env = api.serve_environment(upgraded_url)
    service = ServeProcess(env).wait_ready()
    user = create_user(upgraded_url, f"analyst-{uuid.uuid4().hex[:8]}@example.com")
    api.control("PATCH", "/config", json={"access_token_lifetime": 200})  # inside the margin
    with httpx.Client() as browser:
        assert connect(browser, service.url, user, MS_USER).status_code == 200
    api.control("PATCH", "/config", json={"access_token_lifetime": 3599})
    api.control(
        "POST",
        "/faults",
        json={"kind": "slow", "target": "token", "delay_seconds": TOKEN_DELAY, "count": 1},
    )
    before = api.refreshes()

    def call() -> None:  # the call that refreshes first; it dies with the process
        with contextlib.suppress(httpx.TransportError):
            httpx.get(f"{service.url}{TEAMS}", headers=user.headers, timeout=10)

    calling = threading.Thread(target=call)
    calling.start()
    time.sleep(kill_after)  # a moment of the refresh, not a bound on anything
    service.kill()
    calling.join(timeout=15)

    restarted = ServeProcess(env).wait_ready()
    try:
        # Whatever was stored, the grant works: let Microsoft's clock pass the access
        # token's life so Graph refuses it and the stored refresh token must be redeemed.
        api.control("POST", "/clock", json={"advance_seconds": 2 * HOUR})
        answer = httpx.get(f"{restarted.url}{TEAMS}", headers=user.headers, timeout=30)
        assert answer.status_code == 200, answer.text
        assert api.refresh_outcomes().get("success", 0) >= 1
        assert api.refreshes() > before
        status = httpx.get(
            f"{restarted.url}/auth/integrations/microsoft/status", headers=user.headers
        ).json()
        assert status["status"] == "connected" and status["refresh_failures"] == 0
    finally:
        restarted.stop()
