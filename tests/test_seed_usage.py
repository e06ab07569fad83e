"""The seed's Python usage example, run verbatim by a script against a connected user."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import httpx

from tests.conftest import ENCRYPTION_KEY, Api
from tests.utils.flows import connect
from tests.utils.server import clean_environment

SEED_EXAMPLE = """
from tracecat.auth.integrations.service import IntegrationService
from tracecat.auth.integrations.microsoft import MicrosoftTeamsClient

async with IntegrationService.with_session() as integration_service:   # scripts and workers
    integration = await integration_service.get_user_integration(user_id=user_id, provider="microsoft-teams")
    if integration and not integration.is_expired:
        teams = await MicrosoftTeamsClient(integration.access_token).get_user_teams()
"""

SCRIPT = f"""
import asyncio, json, sys

async def main(user_id):
    teams = None
{textwrap.indent(SEED_EXAMPLE, "    ")}
    print(json.dumps(sorted(team.id for team in teams)))

asyncio.run(main(sys.argv[1]))
"""


def test_seed_example_runs_as_written(api: Api) -> None:
    user = api.user("script@example.com")
    with api.browser() as browser:
        assert connect(browser, api.url, user, "alice@contoso.example").status_code == 200
        through_api = browser.get("/auth/integrations/microsoft/teams", headers=user.headers)
    env = clean_environment(
        DATABASE_URL=api.database_url,
        TRACECAT_ENCRYPTION_KEYS=ENCRYPTION_KEY,
        TRACECAT_DATA_DIR=str(api.settings.tracecat_data_dir),
        MICROSOFT_GRAPH_URL=api.emulator.graph_url,
        MICROSOFT_CA_BUNDLE=str(api.emulator.ca_bundle),
    )
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, user.id], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    teams = json.loads(result.stdout.strip().splitlines()[-1])
    assert teams and teams == sorted(team["id"] for team in through_api.json())
    assert httpx.get(f"{api.url}/healthz").status_code == 200
