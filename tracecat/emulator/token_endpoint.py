"""The identity platform's token endpoint: redeeming authorization codes and refresh tokens.

Split from identity.py (discovery, keys, authorize) because it is the other half of
the flow with its own concerns: client authentication, PKCE, the grant rules and the
AADSTS answer for every way a presented grant can be refused. tokens.py mints what
it answers with.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tracecat.emulator import errors
from tracecat.emulator.encoding import b64url
from tracecat.emulator.errors import AadError
from tracecat.emulator.http_utils import emulator_state, https_base, read_form
from tracecat.emulator.identity import canonical_tenant
from tracecat.emulator.identity_store import (
    AppRegistration,
    AuthorizationCode,
    RefreshGrant,
    TokenRejected,
    TokenRejection,
)
from tracecat.emulator.scopes import ScopeSet, parse_scopes
from tracecat.emulator.state import EmulatorState
from tracecat.emulator.stats import SUCCESS
from tracecat.emulator.tokens import issue_token_response

router = APIRouter()

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass
class TokenAttempt:
    grant_type: str
    email: str | None = None


def _authenticate_client(
    state: EmulatorState, form: dict[str, str], authorization: str | None
) -> AppRegistration:
    basic_id = basic_secret = None
    if authorization and authorization[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
            raw_id, _, raw_secret = decoded.partition(":")
        except (ValueError, UnicodeDecodeError) as exc:
            raise errors.aad_malformed_request("The Authorization header is malformed.") from exc
        # RFC 6749 section 2.3.1: both halves are form-urlencoded before base64.
        basic_id, basic_secret = unquote_plus(raw_id), unquote_plus(raw_secret)
    client_id = basic_id or form.get("client_id", "")
    if not client_id:
        raise errors.aad_missing_parameter("client_id")
    app = state.identity.app(client_id)
    if app is None:
        raise errors.aad_unknown_client(client_id, state.tenant_id)
    secret = basic_secret if basic_id else form.get("client_secret")
    if not secret:
        raise errors.aad_missing_client_secret()
    if not hmac.compare_digest(secret.encode(), app.client_secret.encode()):
        raise errors.aad_invalid_client_secret(app.client_id)
    return app


def _pkce_matches(verifier: str, challenge: str, method: str) -> bool:
    if method == "S256":
        digest = hashlib.sha256(verifier.encode("ascii", errors="replace")).digest()
        computed = b64url(digest)
    else:
        computed = verifier
    return hmac.compare_digest(computed, challenge)


def _entra_time(timestamp: float | None) -> str:
    moment = dt.datetime.fromtimestamp(timestamp or 0, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def _entra_duration(seconds: float) -> str:
    """A .NET TimeSpan as Entra prints it: 90.00:00:00 for ninety days."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}.{hours:02d}:{minutes:02d}:{secs:02d}"


def _code_refused(reason: TokenRejection) -> AadError:
    match reason:
        case TokenRejection.REDEEMED:
            return errors.aad_code_redeemed()
        case TokenRejection.EXPIRED:
            return errors.aad_code_expired()
        case _:
            return errors.aad_invalid_grant()


def _refresh_refused(state: EmulatorState, reason: TokenRejection, grant: RefreshGrant) -> AadError:
    issued = _entra_time(grant.issued_at)
    match reason:
        case TokenRejection.WRONG_CLIENT:
            return errors.aad_refresh_client_mismatch()
        case TokenRejection.REUSED:
            return errors.aad_refresh_reused()
        case TokenRejection.INACTIVE:
            return errors.aad_refresh_inactive(
                issued, _entra_duration(state.now() - grant.issued_at)
            )
        case TokenRejection.REVOKED if state.config.revoked_error_code == 700082:
            # The other way Entra words a dead refresh token (config.revoked_error_code).
            return errors.aad_refresh_inactive(issued, "90.00:00:00")
        case _:  # REVOKED
            user = state.identity.user(grant.email)
            valid_from = _entra_time(user.tokens_valid_from if user else None)
            return errors.aad_grant_revoked(issued, valid_from)


def _redeem_code(
    request: Request, app: AppRegistration, form: dict[str, str], attempt: TokenAttempt
) -> dict[str, Any]:
    state = emulator_state(request)
    code = form.get("code", "")
    if not code:
        raise errors.aad_missing_parameter("code")
    try:
        record: AuthorizationCode = state.identity.redeem_code(code)
    except TokenRejected as rejected:
        if rejected.record is not None:
            attempt.email = rejected.record.email
        raise _code_refused(rejected.reason) from None
    attempt.email = record.email
    if record.client_id != app.client_id:
        raise errors.aad_code_client_mismatch()
    redirect_uri = form.get("redirect_uri", "")
    if redirect_uri != record.redirect_uri:
        raise errors.aad_code_redirect_mismatch(redirect_uri, record.redirect_uri)
    if record.code_challenge and not _pkce_matches(
        form.get("code_verifier", ""),
        record.code_challenge,
        record.code_challenge_method or "plain",
    ):
        raise errors.aad_pkce_mismatch()
    scopes = ScopeSet.from_stored(record.scopes)
    return issue_token_response(
        state,
        https_base(request),
        app,
        state.sign_in(record.email),
        scopes,
        consented=record.scopes,
        nonce=record.nonce,
        include_id_token="openid" in scopes.oidc,
        include_refresh_token=scopes.offline_access,
        include_client_info=form.get("client_info") == "1",
    )


def _redeem_refresh_token(
    request: Request, app: AppRegistration, form: dict[str, str], attempt: TokenAttempt
) -> dict[str, Any]:
    state = emulator_state(request)
    token = form.get("refresh_token", "")
    if not token:
        raise errors.aad_missing_parameter("refresh_token")
    state.stats.record_refresh_token_use()
    try:
        grant = state.identity.use_refresh_token(token, app.client_id)
    except TokenRejected as rejected:
        if not isinstance(rejected.record, RefreshGrant):
            raise errors.aad_invalid_grant() from None
        attempt.email = rejected.record.email
        raise _refresh_refused(state, rejected.reason, rejected.record) from None
    attempt.email = grant.email
    consented = ScopeSet.from_stored(grant.scopes)
    requested = parse_scopes(form.get("scope", ""), app.scopes)
    if not set(requested.graph) <= set(consented.graph):
        missing = sorted(set(requested.graph) - set(consented.graph))
        raise errors.aad_consent_required(app.client_id, " ".join(missing))
    oidc = requested.oidc if "scope" in form else consented.oidc
    scopes = ScopeSet(requested.graph or consented.graph, oidc)
    return issue_token_response(
        state,
        https_base(request),
        app,
        state.sign_in(grant.email),
        scopes,
        consented=grant.scopes,
        nonce=None,
        include_id_token="openid" in scopes.oidc,
        include_refresh_token=True,
        include_client_info=form.get("client_info") == "1",
    )


@router.get("/{tenant}/oauth2/v2.0/token")
async def token_get(tenant: str, request: Request) -> JSONResponse:
    canonical_tenant(emulator_state(request), tenant)
    raise errors.aad_post_only()


GRANTS = {"authorization_code": _redeem_code, "refresh_token": _redeem_refresh_token}


@router.post("/{tenant}/oauth2/v2.0/token")
async def token(tenant: str, request: Request) -> JSONResponse:
    state = emulator_state(request)
    form = await read_form(request)
    attempt = TokenAttempt(form.get("grant_type", ""))
    try:
        canonical_tenant(state, tenant)
        if not attempt.grant_type:
            raise errors.aad_missing_parameter("grant_type")
        handler = GRANTS.get(attempt.grant_type)
        if handler is None:
            raise errors.aad_unsupported_grant_type(attempt.grant_type)
        app = _authenticate_client(state, form, request.headers.get("authorization"))
        body = handler(request, app, form, attempt)
    except AadError as err:
        state.stats.record_token_request(attempt.grant_type or "missing", err.error, attempt.email)
        err.headers = {**NO_STORE, **err.headers}
        raise
    state.stats.record_token_request(attempt.grant_type, SUCCESS, attempt.email)
    return JSONResponse(body, headers=NO_STORE)
