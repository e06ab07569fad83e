"""Scope parsing the way the identity platform does it for Microsoft Graph.

Clients ask for `https://graph.microsoft.com/ChannelMessage.Send` (or the bare
name, which means Graph); the token response and the `scp` claim carry the bare
name. OIDC scopes ride along and are reported as `profile openid email`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracecat.emulator.constants import GRAPH_APP_ID, GRAPH_RESOURCE
from tracecat.emulator.errors import aad_invalid_scope, aad_unknown_graph_scope

OIDC_SCOPES = ("openid", "profile", "email", "offline_access")

# Delegated Graph permissions the emulator knows; asking for any other name fails
# like Entra does for a permission that does not exist on Graph.
KNOWN_GRAPH_SCOPES = (
    "User.Read",
    "User.ReadWrite",
    "User.ReadBasic.All",
    "User.Read.All",
    "User.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
    "Group.Read.All",
    "Group.ReadWrite.All",
    "Team.ReadBasic.All",
    "TeamSettings.Read.All",
    "TeamSettings.ReadWrite.All",
    "Channel.ReadBasic.All",
    "ChannelSettings.Read.All",
    "ChannelSettings.ReadWrite.All",
    "ChannelMessage.Read.All",
    "ChannelMessage.ReadWrite",
    "ChannelMessage.Send",
    "Chat.Read",
    "Chat.ReadWrite",
    "ChatMessage.Send",
    "Mail.Read",
    "Mail.Send",
    "Calendars.Read",
    "Files.Read",
    "Files.ReadWrite",
)
_CANONICAL = {name.lower(): name for name in KNOWN_GRAPH_SCOPES}
_GRAPH_PREFIXES = (f"{GRAPH_RESOURCE}/", f"{GRAPH_APP_ID}/")
# With no Graph permission requested, Entra still mints a Graph token for sign-in.
DEFAULT_GRAPH_SCOPES = ("User.Read",)


@dataclass(frozen=True)
class ScopeSet:
    graph: tuple[str, ...]
    oidc: tuple[str, ...]

    @property
    def offline_access(self) -> bool:
        return "offline_access" in self.oidc

    def granted(self) -> str:
        """The `scope` of a token response and the `scp` claim of the access token."""
        extra = (
            ["profile", "openid", "email"]
            if "openid" in self.oidc
            else [s for s in ("profile", "email") if s in self.oidc]
        )
        return " ".join([*sorted(self.graph), *extra])

    def or_default_graph(self, graph: tuple[str, ...] = DEFAULT_GRAPH_SCOPES) -> ScopeSet:
        return self if self.graph else ScopeSet(graph, self.oidc)

    def stored(self) -> tuple[str, ...]:
        return (*self.graph, *self.oidc)

    @classmethod
    def from_stored(cls, scopes: tuple[str, ...]) -> ScopeSet:
        return cls(
            graph=tuple(s for s in scopes if s not in OIDC_SCOPES),
            oidc=tuple(s for s in scopes if s in OIDC_SCOPES),
        )


def parse_scopes(raw: str, app_scopes: tuple[str, ...]) -> ScopeSet:
    """Raise AadError for a scope of another resource or an unknown Graph permission."""
    graph: list[str] = []
    oidc: list[str] = []
    for scope in raw.split():
        lowered = scope.lower()
        if lowered in OIDC_SCOPES:
            _add(oidc, lowered)
            continue
        name = scope
        for prefix in _GRAPH_PREFIXES:
            if lowered.startswith(prefix):
                name = scope[len(prefix) :]
                break
        else:
            if "/" in scope or ":" in scope:
                raise aad_invalid_scope(scope)
        if name == ".default":
            for item in app_scopes:
                _add(graph, item)
            continue
        canonical = _CANONICAL.get(name.lower())
        if canonical is None:
            raise aad_unknown_graph_scope(name)
        _add(graph, canonical)
    return ScopeSet(tuple(graph), tuple(oidc))


def _add(items: list[str], item: str) -> None:
    if item not in items:
        items.append(item)
