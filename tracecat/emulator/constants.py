"""Fixed identifiers of the emulated tenant and its built-in demo app registration.

They are constants (not random per run) so a developer can paste them into a
client configuration once and keep using them across emulator restarts.
"""

from __future__ import annotations

TENANT_ID = "8f6c2d4e-3b1a-4c5d-9e7f-1a2b3c4d5e6f"
TENANT_DOMAIN = "tracecat-emulator.onmicrosoft.com"
TENANT_DISPLAY_NAME = "Tracecat Emulator"

DEMO_CLIENT_ID = "4b7e9c1d-2a3f-4e5b-8c6d-7e8f9a0b1c2d"
DEMO_CLIENT_SECRET = "Emu8Q~tracecat.demo.secret-not-for-production"
DEMO_APP_NAME = "Tracecat Emulator Demo App"

# Microsoft Graph's resource identifiers; access tokens carry one of them as `aud`.
GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"

DEMO_USERS = (
    f"alice@{TENANT_DOMAIN}",
    f"bob@{TENANT_DOMAIN}",
    f"carol@{TENANT_DOMAIN}",
)

# Delegated permissions the demo app has configured; granted for `.default`.
DEMO_APP_SCOPES = (
    "User.Read",
    "Team.ReadBasic.All",
    "Channel.ReadBasic.All",
    "ChannelMessage.Read.All",
    "ChannelMessage.Send",
)
