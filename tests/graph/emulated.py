"""The Teams client's test bench: a demo user signed in to the Microsoft emulator, with its
control API to arrange faults and read what Graph stored (used by tests/graph/test_teams_*.py
through the `emulated` fixture in conftest.py)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from tests.utils.graph_sign_in import graph_token
from tests.utils.server import CONTROL_HEADERS
from tracecat.auth.integrations.microsoft import MicrosoftTeamsClient
from tracecat.config import Settings
from tracecat.emulator.constants import DEMO_USERS
from tracecat.emulator.demo_data import JOINED_TEAMS, PRIVATE_TEAMS, channel_id_for, team_id_for
from tracecat.emulator.server import EmulatorServer
from tracecat.graph.pacing import InProcessPacer
from tracecat.graph.transport import RetryPolicy

# The emulator's demo tenant: every user who signs in is a member of the joined teams.
SECOPS_NAME, _, SECOPS_CHANNELS = JOINED_TEAMS[0]
SECOPS = team_id_for(SECOPS_NAME)
ALERTS = channel_id_for(SECOPS, "Alerts")
PRIVATE = team_id_for(PRIVATE_TEAMS[0][0])  # a team nobody joins
ME = "/v1.0/me"
JOINED = "/v1.0/me/joinedTeams"
SECOPS_CHANNELS_PATH = f"/v1.0/teams/{SECOPS}/channels"
# As the client must send it: ":" and "@" of the channel id percent-encoded.
ALERTS_MESSAGES = f"{SECOPS_CHANNELS_PATH}/{quote(ALERTS, safe='')}/messages"

# Pacing margin for tests whose sends race other tests for the CPU (see the burst test).
TEST_SAFETY = 0.75


def fast_pacer() -> InProcessPacer:
    return InProcessPacer(channel_per_second=1000, team_per_second=1000, tenant_per_second=1000)


@dataclass
class EmulatedTeams:
    """A signed-in demo user's token, and the emulator's control API to arrange and inspect."""

    emulator: EmulatorServer
    token: str
    settings: Settings
    control: httpx.Client
    # What the retry policies of `client()` would have slept, in order: they do not sleep.
    waits: list[float] = field(default_factory=list)

    def retry(self, **policy: Any) -> RetryPolicy:
        """Production retry rules, with full backoff (no jitter) and waits recorded, not slept."""

        async def sleep(seconds: float) -> None:
            self.waits.append(seconds)
            await asyncio.sleep(0)

        return RetryPolicy(**{"sleep": sleep, "jitter": lambda: 1.0, **policy})

    def client(self, **options: Any) -> MicrosoftTeamsClient:
        options.setdefault("pacer", fast_pacer())
        options.setdefault("retry", self.retry())
        return MicrosoftTeamsClient(self.token, settings=self.settings, **options)

    def tls(self) -> ssl.SSLContext:
        return self.settings.ssl_context()

    def fault(self, **rule: Any) -> None:
        self.control.post("/faults", json=rule).raise_for_status()

    def faults_left(self) -> list[dict[str, Any]]:
        return self.control.get("/faults").json()["faults"]

    def configure(self, **patch: Any) -> None:
        self.control.patch("/config", json=patch).raise_for_status()

    def advance_clock(self, seconds: float) -> None:
        self.control.post("/clock", json={"advance_seconds": seconds}).raise_for_status()

    def stored_messages(self) -> list[dict[str, Any]]:
        return self.control.get("/messages").json()["messages"]

    def stored_contents(self) -> list[str]:
        return [m["chat_message"]["body"]["content"] for m in self.stored_messages()]

    def stats(self) -> dict[str, Any]:
        return self.control.get("/stats").json()

    def statuses(self, method: str, path: str) -> list[int]:
        """The answers to every `method` request for exactly `path` (as sent), in order."""
        log = self.stats()["graph_request_log"]
        return [r["status"] for r in log if r["method"] == method and r["path"] == path]

    def calls(self, method: str, path: str) -> int:
        return len(self.statuses(method, path))


def sign_in(emulator: EmulatorServer, email: str) -> str:
    """The auth code flow through MSAL for the demo app's scopes."""
    return graph_token(emulator, email)


E = TypeVar("E", bound=EmulatedTeams)


@contextmanager
def signed_in_bench(emulator: EmulatorServer, kind: type[E], **config: Any) -> Iterator[E]:
    """A reset emulator, the first demo user signed in, `config` patched in (throttling off
    unless a test is about pacing: several sends to one channel within a second would be
    refused, 1 message per second per channel, as on Teams)."""
    with httpx.Client(
        base_url=f"{emulator.http_url}/_emulator", headers=CONTROL_HEADERS, timeout=10
    ) as control:
        control.post("/reset").raise_for_status()
        settings = Settings(
            microsoft_graph_url=emulator.graph_url, microsoft_ca_bundle=emulator.ca_bundle
        )
        bench = kind(emulator, sign_in(emulator, DEMO_USERS[0]), settings, control)
        bench.configure(**{"throttling": {"enabled": False}, **config})
        yield bench
