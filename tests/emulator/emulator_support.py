"""Constants and helpers shared by the emulator tests (a uniquely named module, not conftest)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from tracecat.emulator.constants import DEMO_APP_SCOPES, DEMO_USERS, GRAPH_RESOURCE

GRAPH = GRAPH_RESOURCE
ALL_SCOPES = [f"{GRAPH}/{scope}" for scope in DEMO_APP_SCOPES]
ALICE, BOB = DEMO_USERS[0], DEMO_USERS[1]
REDIRECT_URI = "http://localhost:8400/auth/callback"


def query_of(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}
