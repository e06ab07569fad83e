"""Who may call a Graph route: bearer-token authentication, delegated scopes, throttling.

Every Graph route starts with `authorize()`: check the token like Graph does (signature,
audience, lifetime by the emulator's clock, revocation through the control API), then
the delegated permission Graph documents for the operation, then spend the Teams
rate-limit budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt
from fastapi import Request

from tracecat.emulator import errors
from tracecat.emulator.constants import GRAPH_APP_ID, GRAPH_RESOURCE
from tracecat.emulator.demo_data import EmulatedChannel, EmulatedTeam
from tracecat.emulator.http_utils import emulator_state, https_base
from tracecat.emulator.identity_store import DirectoryUser, TokenRejection
from tracecat.emulator.state import EmulatorState

# Delegated permissions that satisfy each operation, least privileged first (Graph docs).
_DIRECTORY = ("Directory.Read.All", "Directory.ReadWrite.All")
READ_ME = ("User.Read", "User.ReadWrite", "User.ReadBasic.All", "User.Read.All", *_DIRECTORY)
READ_JOINED_TEAMS = (
    "Team.ReadBasic.All",
    "TeamSettings.Read.All",
    "TeamSettings.ReadWrite.All",
    "User.Read.All",
    "User.ReadWrite.All",
    *_DIRECTORY,
)
READ_TEAM = (
    "Team.ReadBasic.All",
    "TeamSettings.Read.All",
    "TeamSettings.ReadWrite.All",
    "Group.Read.All",
    "Group.ReadWrite.All",
    *_DIRECTORY,
)
READ_CHANNELS = (
    "Channel.ReadBasic.All",
    "ChannelSettings.Read.All",
    "ChannelSettings.ReadWrite.All",
    "Group.Read.All",
    "Group.ReadWrite.All",
    *_DIRECTORY,
)
READ_MESSAGES = ("ChannelMessage.Read.All", "Group.Read.All", "Group.ReadWrite.All")
SEND_MESSAGES = ("ChannelMessage.Send", "Group.ReadWrite.All")

EXPIRED = "Lifetime validation failed, the token is expired."


@dataclass
class Caller:
    user: DirectoryUser
    app_id: str
    scopes: list[str]


def authenticate(request: Request) -> Caller:
    state = emulator_state(request)
    challenge_uri = f"{https_base(request)}/common/oauth2/v2.0/authorize"

    def reject(message: str) -> errors.GraphApiError:
        return errors.graph_unauthenticated(message, challenge_uri)

    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if not token or scheme.lower() != "bearer":
        raise reject("Access token is empty.")
    try:
        claims = state.signing_key.verify(token, [GRAPH_RESOURCE, GRAPH_APP_ID], state.now())
    except jwt.ExpiredSignatureError:
        raise reject(EXPIRED) from None
    except jwt.InvalidAudienceError:
        raise reject("Access token validation failure. Invalid audience.") from None
    except jwt.DecodeError:
        raise reject("IDX14100: JWT is not well formed.") from None
    except jwt.PyJWTError:
        raise reject("Access token validation failure.") from None
    email = claims.get("upn", "")
    rejection = state.identity.access_token_rejection(claims.get("jti", ""), email, claims["iat"])
    if rejection == TokenRejection.EXPIRED:
        raise reject(EXPIRED)
    if rejection == TokenRejection.REVOKED:
        raise reject("Access token has been revoked.")
    # Tokens outlive a reset or restart, so the user is recreated from the claims.
    return Caller(state.sign_in(email), claims.get("appid", ""), claims.get("scp", "").split())


def authorize(
    request: Request,
    accepted: tuple[str, ...],
    *,
    team_id: str | None = None,
    channel_send: str | None = None,
) -> Caller:
    """Authenticate, check scopes, then spend the Teams rate-limit budget."""
    caller = authenticate(request)
    if not any(scope in caller.scopes for scope in accepted):
        raise errors.graph_missing_scope(accepted, caller.scopes)
    state = emulator_state(request)
    limits = state.config.throttling
    checks: list[tuple[tuple[str, ...], int]] = [
        (("tenant", caller.app_id), limits.tenant_requests_per_second)
    ]
    if team_id is not None:
        checks.append((("team", caller.app_id, team_id.lower()), limits.team_requests_per_second))
    if channel_send is not None:
        checks.append(
            (("send", caller.app_id, channel_send.lower()), limits.channel_messages_per_second)
        )
    retry_after = state.admit(checks)
    if retry_after is not None:
        raise errors.graph_throttled(retry_after)
    return caller


def member_team(state: EmulatorState, caller: Caller, team_id: str) -> EmulatedTeam:
    """The team, if the caller is a member (Graph answers 404 for no team, 403 otherwise)."""
    team = state.teams.team(team_id)
    if team is None:
        raise errors.graph_not_found(f"No team found with Group Id {team_id}")
    if not state.teams.is_member(team.id, caller.user.email):
        raise errors.graph_forbidden(
            f"User {caller.user.oid} is not a member of team {team.id}; only members can access it."
        )
    return team


def team_channel(team: EmulatedTeam, channel_id: str) -> EmulatedChannel:
    channel = team.channel(channel_id)
    if channel is None:
        raise errors.graph_not_found(f"Channel {channel_id} was not found in team {team.id}.")
    return channel
