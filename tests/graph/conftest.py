"""Fixtures of the Graph client tests: a signed-in demo user on the emulator."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.graph.emulated import EmulatedTeams, sign_in
from tests.utils.server import CONTROL_HEADERS
from tracecat.config import Settings, get_settings
from tracecat.emulator.constants import DEMO_USERS
from tracecat.emulator.server import EmulatorServer


@pytest.fixture
def emulated(emulator: EmulatorServer) -> Iterator[EmulatedTeams]:
    with httpx.Client(
        base_url=f"{emulator.http_url}/_emulator", headers=CONTROL_HEADERS, timeout=10
    ) as control:
        control.post("/reset").raise_for_status()
        settings = Settings(
            microsoft_graph_url=emulator.graph_url, microsoft_ca_bundle=emulator.ca_bundle
        )
        teams = EmulatedTeams(emulator, sign_in(emulator, DEMO_USERS[0]), settings, control)
        # Off unless a test is about pacing: several sends to one channel within a second
        # would otherwise be refused (1 message per second per channel, as on Teams).
        teams.configure(throttling={"enabled": False})
        yield teams


@pytest.fixture
def settings_from_environment(
    emulated: EmulatedTeams, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    monkeypatch.setenv("MICROSOFT_GRAPH_URL", emulated.emulator.graph_url)
    monkeypatch.setenv("MICROSOFT_CA_BUNDLE", str(emulated.emulator.ca_bundle))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
