"""Fixtures of the Graph client tests: a signed-in demo user on the emulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.graph.emulated import EmulatedTeams, signed_in_bench
from tracecat.config import get_settings
from tracecat.emulator.server import EmulatorServer


@pytest.fixture
def emulated(emulator: EmulatorServer) -> Iterator[EmulatedTeams]:
    with signed_in_bench(emulator, EmulatedTeams) as teams:
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
