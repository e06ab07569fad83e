"""The emulated tenant's teams and channels.

Ids are derived from names so they stay the same across restarts and resets,
and look like Graph's: team ids are GUIDs, channel ids `19:<hex>@thread.tacv2`.
The classes are called Emulated* to keep them apart from the product's Graph
models (tracecat.graph.resources.Team and Channel), which parse what Graph answers.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field

from tracecat.emulator.constants import TENANT_ID

DEMO_CREATED = "2024-01-15T09:00:00Z"

# Every user who signs in joins the first three; nobody joins the last one, so
# tests can see how Graph answers for a team the caller is not a member of.
JOINED_TEAMS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "Security Operations",
        "Alert triage and incident response",
        ("General", "Alerts", "Incidents", "Threat Intel", "Shift Handoff"),
    ),
    (
        "Platform Engineering",
        "Builds, deployments and on-call",
        ("General", "Deployments", "On-call"),
    ),
    ("Tracecat Demo", "A place to try the Teams integration", ("General", "Random")),
)
PRIVATE_TEAMS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Executive Leadership", "Members only", ("General",)),
)


@dataclass
class EmulatedChannel:
    id: str
    team_id: str
    display_name: str
    description: str
    created: str = DEMO_CREATED


@dataclass
class EmulatedTeam:
    id: str
    display_name: str
    description: str
    open_to_all_users: bool
    channels: list[EmulatedChannel] = field(default_factory=list)
    created: str = DEMO_CREATED

    def channel(self, channel_id: str) -> EmulatedChannel | None:
        wanted = channel_id.lower()
        return next((c for c in self.channels if c.id == wanted), None)


def team_id_for(name: str) -> str:
    return str(uuid.uuid5(uuid.UUID(TENANT_ID), f"team/{name}"))


def channel_id_for(team_id: str, name: str) -> str:
    digest = hashlib.sha256(f"{team_id}/{name}".encode()).hexdigest()[:32]
    return f"19:{digest}@thread.tacv2"


def build_teams() -> list[EmulatedTeam]:
    teams = []
    for specs, open_to_all in ((JOINED_TEAMS, True), (PRIVATE_TEAMS, False)):
        for name, description, channel_names in specs:
            team = EmulatedTeam(team_id_for(name), name, description, open_to_all)
            team.channels = [
                EmulatedChannel(
                    channel_id_for(team.id, channel),
                    team.id,
                    channel,
                    f"{channel} channel of {name}" if channel != "General" else description,
                )
                for channel in channel_names
            ]
            teams.append(team)
    return teams
