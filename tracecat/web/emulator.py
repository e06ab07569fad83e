"""The emulator's control API, as the pages use it: only when Microsoft is the built-in
emulator (its demo app registration), to post in a channel as someone else."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from tracecat.config import Settings
from tracecat.emulator.constants import DEMO_CLIENT_ID
from tracecat.exceptions import UpstreamError
from tracecat.graph.transport import GraphPool

SOMEONE_ELSE = "bob@contoso.example"
DEMO_RECEIVER_PATH = "/demo/receiver"
TEST_MESSAGE = "Test message from someone else: does the webhook arrive?"


@dataclass(frozen=True)
class EmulatorControl:
    base_url: str  # https://host:port/_emulator

    @classmethod
    def for_settings(cls, settings: Settings) -> EmulatorControl | None:
        if settings.microsoft_client_id != DEMO_CLIENT_ID:
            return None
        return cls(settings.microsoft_authority_host.rstrip("/") + "/_emulator")

    async def post_as_someone_else(self, pool: GraphPool, team_id: str, channel_id: str) -> None:
        """The emulator stores it like a Graph post and notifies the channel's subscribers."""
        team, channel = quote(team_id, safe=""), quote(channel_id, safe="")
        url = f"{self.base_url}/teams/{team}/channels/{channel}/messages"
        response = await pool.http.post(
            url, json={"content": TEST_MESSAGE, "from": SOMEONE_ELSE}, timeout=10
        )
        if response.status_code >= 300:
            raise UpstreamError(f"the emulator refused the test message ({response.status_code})")


def demo_receiver_url(settings: Settings) -> str | None:
    """With the emulator only: where Microsoft's notifications reach us, the demo receiver
    (`demo_receiver.py`) listens too; the URL a newcomer subscribes."""
    if EmulatorControl.for_settings(settings) is None or settings.tracecat_public_url is None:
        return None
    return settings.tracecat_public_url.rstrip("/") + DEMO_RECEIVER_PATH
