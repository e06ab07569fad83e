"""Minting the token response: access token, id token, refresh token and client_info."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from tracecat.emulator.constants import GRAPH_RESOURCE
from tracecat.emulator.encoding import b64url
from tracecat.emulator.identity_store import AppRegistration, DirectoryUser
from tracecat.emulator.scopes import ScopeSet
from tracecat.emulator.state import EmulatorState

ID_TOKEN_LIFETIME = 3600


def issuer(https_base: str, tenant_id: str) -> str:
    return f"{https_base}/{tenant_id}/v2.0"


def client_info(user: DirectoryUser, tenant_id: str) -> str:
    """What MSAL builds the account's home_account_id from (uid.utid)."""
    raw = json.dumps({"uid": user.oid, "utid": tenant_id}, separators=(",", ":")).encode()
    return b64url(raw)


def pairwise_subject(user: DirectoryUser, audience: str) -> str:
    # Entra's `sub` is pairwise: stable per user and app, different across apps.
    digest = hashlib.sha256(f"{user.oid}/{audience}".encode()).digest()
    return b64url(digest)[:43]


def issue_token_response(
    state: EmulatorState,
    https_base: str,
    app: AppRegistration,
    user: DirectoryUser,
    scopes: ScopeSet,
    *,
    consented: tuple[str, ...],
    nonce: str | None,
    include_id_token: bool,
    include_refresh_token: bool,
    include_client_info: bool,
) -> dict[str, Any]:
    now = state.now()  # the emulator's clock, so a test that moved it gets tokens from then
    iat = int(now)
    lifetime = state.config.access_token_lifetime
    iss = issuer(https_base, state.tenant_id)
    granted = scopes.granted()
    jti = str(uuid.uuid4())
    access_claims = {
        "aud": GRAPH_RESOURCE,
        "iss": iss,
        "iat": iat,
        "nbf": iat,
        "exp": iat + lifetime,
        "jti": jti,
        "uti": jti,
        "ver": "2.0",
        "tid": state.tenant_id,
        "oid": user.oid,
        "sub": pairwise_subject(user, GRAPH_RESOURCE),
        "upn": user.email,
        "unique_name": user.email,
        "preferred_username": user.email,
        "name": user.display_name,
        "given_name": user.given_name,
        "family_name": user.surname,
        "scp": granted,
        "appid": app.client_id,
        "azp": app.client_id,
        "app_displayname": app.display_name,
        "appidacr": "1",
        "idtyp": "user",
    }
    state.identity.record_access_token(jti, user.email, app.client_id, now)
    body: dict[str, Any] = {
        "token_type": "Bearer",
        "scope": granted,
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": state.signing_key.sign(access_claims),
    }
    if include_refresh_token:
        body["refresh_token"] = state.identity.add_refresh_token(
            app.client_id, user.email, consented
        )
    if include_id_token:
        id_claims: dict[str, Any] = {
            "aud": app.client_id,
            "iss": iss,
            "iat": iat,
            "nbf": iat,
            "exp": iat + ID_TOKEN_LIFETIME,
            "sub": pairwise_subject(user, app.client_id),
            "oid": user.oid,
            "tid": state.tenant_id,
            "preferred_username": user.email,
            "name": user.display_name,
            "uti": str(uuid.uuid4()),
            "ver": "2.0",
        }
        if "email" in scopes.oidc:
            id_claims["email"] = user.email
        if nonce:
            id_claims["nonce"] = nonce
        body["id_token"] = state.signing_key.sign(id_claims)
    if include_client_info:
        body["client_info"] = client_info(user, state.tenant_id)
    return body
