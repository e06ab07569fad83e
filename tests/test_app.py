"""The app when its database is gone: a clear 503 to retry, never a 500 or a traceback."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import Api
from tests.utils.flows import connect
from tests.utils.server import LiveServer
from tracecat.app import create_app
from tracecat.config import Settings
from tracecat.crypto import generate_key


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_unreachable_database_answers_503(backend: str, tmp_path: Path) -> None:
    unusable = {
        "postgresql": "postgresql://root@127.0.0.1:1/nowhere",  # nothing listens there
        "sqlite": f"sqlite:///{tmp_path}",  # a directory, not a database file
    }
    settings = Settings(
        database_url=unusable[backend],
        tracecat_data_dir=tmp_path,
        tracecat_encryption_keys=[generate_key()],
        microsoft_client_id="client",
        microsoft_client_secret="secret",
        microsoft_redirect_uri="http://127.0.0.1:9/auth/integrations/microsoft/callback",
        tracecat_refresh_interval_seconds=0,
    )
    server = LiveServer(create_app(settings)).start()
    try:
        response = httpx.get(
            f"{server.url}/auth/integrations/microsoft/status",
            headers={"Authorization": "Bearer tci_anything"},
            timeout=60,
        )
        assert response.status_code == 503
        assert "database" in response.json()["detail"]
        assert response.headers["Retry-After"]
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        server.stop()


def test_secrets_under_another_key_answer_503_not_500(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """An instance started with the wrong TRACECAT_ENCRYPTION_KEYS: a clear 503, the fix in
    the log, no token and no traceback in the answer."""
    user = api.user("analyst@example.com")
    with api.browser() as browser:
        assert connect(browser, api.url, user, "alice@contoso.example").status_code == 200
    with api.another_server(tracecat_encryption_keys=[generate_key()]) as other:
        teams = httpx.get(f"{other}/auth/integrations/microsoft/teams", headers=user.headers)
        assert teams.status_code == 503
        assert teams.json() == {"detail": "stored secrets cannot be decrypted: see server log"}
        # What needs no token still works: the status reads no secret.
        status = httpx.get(f"{other}/auth/integrations/microsoft/status", headers=user.headers)
        assert status.status_code == 200 and status.json()["status"] == "connected"
    assert any("TRACECAT_ENCRYPTION_KEYS" in r.getMessage() for r in caplog.records)
    # The app that holds the right key was not disturbed by the other one's keys.
    with api.browser() as browser:
        ok = browser.get("/auth/integrations/microsoft/teams", headers=user.headers)
        assert ok.status_code == 200
