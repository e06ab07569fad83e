"""Microsoft identity platform v2.0: discovery, JWKS, logout and authorize (with a sign-in page).

The token endpoint, the other half of the flow, is in token_endpoint.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from tracecat.emulator import errors
from tracecat.emulator.constants import DEMO_USERS
from tracecat.emulator.errors import AadError
from tracecat.emulator.http_utils import emulator_state, http_base, https_base, read_form
from tracecat.emulator.identity_store import AppRegistration, describe_user
from tracecat.emulator.pages import error_page, form_post_page, signin_page
from tracecat.emulator.scopes import ScopeSet, parse_scopes
from tracecat.emulator.state import EmulatorState
from tracecat.emulator.tokens import client_info, issuer

router = APIRouter()

MULTI_TENANT_ALIASES = ("common", "organizations")
RESPONSE_MODES = ("query", "fragment", "form_post")
PKCE_CHALLENGE = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Fields our sign-in form adds on top of the original authorize parameters.
SIGNIN_FIELDS = ("emulator_action", "user", "email")


def canonical_tenant(state: EmulatorState, tenant: str) -> str:
    """The tenant path segment endpoints are published under; raise for unknown tenants."""
    lowered = tenant.lower()
    if lowered in MULTI_TENANT_ALIASES:
        return lowered
    if lowered in (state.tenant_id, state.tenant_domain):
        return state.tenant_id
    raise errors.aad_tenant_not_found(tenant)


def request_ids(request: Request) -> tuple[str, str]:
    return request.state.request_id, request.state.client_request_id


# -- discovery -------------------------------------------------------------------------


@router.get("/{tenant}/v2.0/.well-known/openid-configuration")
async def openid_configuration(tenant: str, request: Request) -> JSONResponse:
    state = emulator_state(request)
    path_tenant = canonical_tenant(state, tenant)
    secure, browser = https_base(request), http_base(request)
    multi = path_tenant in MULTI_TENANT_ALIASES
    host = urlsplit(secure).netloc
    document = {
        "token_endpoint": f"{secure}/{path_tenant}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "jwks_uri": f"{secure}/{path_tenant}/discovery/v2.0/keys",
        "response_modes_supported": list(RESPONSE_MODES),
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": issuer(secure, "{tenantid}" if multi else state.tenant_id),
        "request_uri_parameter_supported": False,
        "userinfo_endpoint": f"{secure}/oidc/userinfo",
        # Browsers open these, and they do not trust the emulator's private CA.
        "authorization_endpoint": f"{browser}/{path_tenant}/oauth2/v2.0/authorize",
        "end_session_endpoint": f"{browser}/{path_tenant}/oauth2/v2.0/logout",
        "http_logout_supported": True,
        "frontchannel_logout_supported": True,
        "code_challenge_methods_supported": ["plain", "S256"],
        "claims_supported": [
            "sub",
            "iss",
            "aud",
            "exp",
            "iat",
            "nbf",
            "nonce",
            "preferred_username",
            "name",
            "tid",
            "ver",
            "oid",
            "email",
        ],  # fmt: skip
        "kerberos_endpoint": f"{secure}/{path_tenant}/kerberos",
        "tenant_region_scope": None if multi else "NA",
        "cloud_instance_name": host,
        "cloud_graph_host_name": host,
        "msgraph_host": host,
        "rbac_url": secure,
    }
    return JSONResponse(document)


@router.get("/{tenant}/discovery/v2.0/keys")
async def jwks(tenant: str, request: Request) -> JSONResponse:
    state = emulator_state(request)
    canonical_tenant(state, tenant)
    key = state.signing_key.jwk(issuer(https_base(request), "{tenantid}"))
    return JSONResponse({"keys": [key]})


@router.get("/error")
async def error_lookup(code: str = "") -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><title>AADSTS{code}</title><p>Error AADSTS{code[:12]} was returned by "
        "the offline Microsoft emulator. See Microsoft Entra's AADSTS reference for its "
        "meaning.</p>"
    )


@router.get("/{tenant}/oauth2/v2.0/logout")
async def logout(tenant: str, request: Request) -> Response:
    canonical_tenant(emulator_state(request), tenant)
    target = request.query_params.get("post_logout_redirect_uri")
    if target:
        return RedirectResponse(target, status_code=302)
    return HTMLResponse(
        "<!doctype html><title>Signed out</title><p>You signed out of your account.</p>"
    )


# -- authorize -------------------------------------------------------------------------


@dataclass
class AuthorizeRequest:
    tenant: str
    app: AppRegistration
    redirect_uri: str
    response_mode: str
    params: dict[str, str]
    scopes: ScopeSet | None = None

    @property
    def state(self) -> str | None:
        return self.params.get("state")


def _validate_client(state: EmulatorState, tenant: str, params: dict[str, str]) -> AuthorizeRequest:
    """Checks whose failure must not redirect: the redirect URI is not trusted yet."""
    path_tenant = canonical_tenant(state, tenant)
    client_id = params.get("client_id", "")
    if not client_id:
        raise errors.aad_missing_parameter("client_id")
    app = state.identity.app(client_id)
    if app is None:
        raise errors.aad_unknown_client(client_id, state.tenant_id)
    redirect_uri = params.get("redirect_uri", "")
    if not redirect_uri:
        if not app.redirect_uris:
            raise errors.aad_no_reply_address()
        redirect_uri = app.redirect_uris[0]
    if not app.accepts_redirect(redirect_uri):
        raise errors.aad_redirect_uri_mismatch(redirect_uri, client_id)
    response_mode = params.get("response_mode") or "query"
    if response_mode not in RESPONSE_MODES:
        raise errors.aad_malformed_request(f"The response_mode '{response_mode}' is not supported.")
    return AuthorizeRequest(path_tenant, app, redirect_uri, response_mode, params)


def _validate_request(auth: AuthorizeRequest) -> None:
    """Checks whose failure is reported to the client through its redirect URI."""
    params = auth.params
    response_type = params.get("response_type", "")
    if not response_type:
        raise errors.aad_missing_parameter("response_type")
    if response_type != "code":
        raise errors.aad_unsupported_response_type(response_type)
    if not params.get("scope", "").strip():
        raise errors.aad_missing_parameter("scope")
    auth.scopes = parse_scopes(params["scope"], auth.app.scopes).or_default_graph()
    challenge = params.get("code_challenge")
    method = params.get("code_challenge_method")
    if method and not challenge:
        raise errors.aad_missing_parameter("code_challenge")
    if challenge:
        if (method or "plain") not in ("plain", "S256"):
            raise errors.aad_invalid_code_challenge(
                f"The code_challenge_method '{method}' is not supported."
            )
        if not PKCE_CHALLENGE.match(challenge):
            raise errors.aad_invalid_code_challenge("Invalid size of Code_Challenge parameter.")


def _redirect(auth: AuthorizeRequest, result: dict[str, str]) -> Response:
    fields = {**result, **({"state": auth.state} if auth.state is not None else {})}
    if auth.response_mode == "form_post":
        return form_post_page(auth.redirect_uri, fields)
    parts = urlsplit(auth.redirect_uri)
    encoded = urlencode(fields)
    if auth.response_mode == "fragment":
        target = urlunsplit(parts._replace(fragment=encoded))
    else:
        query = f"{parts.query}&{encoded}" if parts.query else encoded
        target = urlunsplit(parts._replace(query=query))
    return RedirectResponse(target, status_code=302)


def _redirect_error(auth: AuthorizeRequest, err: AadError) -> Response:
    fields = {"error": err.error, "error_description": err.short_description}
    if err.subcode:
        fields["error_subcode"] = err.subcode
    return _redirect(auth, fields)


def _issue_code(state: EmulatorState, auth: AuthorizeRequest, email: str) -> Response:
    assert auth.scopes is not None
    user = state.sign_in(email)
    params = auth.params
    challenge = params.get("code_challenge")
    code = state.identity.add_code(
        client_id=auth.app.client_id,
        redirect_uri=auth.redirect_uri,
        scopes=auth.scopes.stored(),
        email=user.email,
        nonce=params.get("nonce"),
        code_challenge=challenge,
        code_challenge_method=(params.get("code_challenge_method") or "plain")
        if challenge
        else None,
    )
    result = {"code": code.code}
    if params.get("client_info") == "1":
        result["client_info"] = client_info(user, state.tenant_id)
    return _redirect(auth, result)


def _signin(request: Request, auth: AuthorizeRequest, email: str = "", error: str = "") -> Response:
    state = emulator_state(request)
    assert auth.scopes is not None
    demo = [(describe_user(mail).display_name, mail) for mail in DEMO_USERS]
    return signin_page(
        action=f"/{auth.tenant}/oauth2/v2.0/authorize",
        params=auth.params,
        app_name=auth.app.display_name,
        tenant_domain=state.tenant_domain,
        scopes=auth.scopes.granted(),
        demo_users=demo,
        email=email,
        error=error,
    )


async def _authorize(request: Request, tenant: str, params: dict[str, str]) -> Response:
    state = emulator_state(request)
    own = {key: params.pop(key) for key in SIGNIN_FIELDS if key in params}
    try:
        auth = _validate_client(state, tenant, params)
    except AadError as err:
        return error_page(err, *request_ids(request))
    try:
        _validate_request(auth)
    except AadError as err:
        return _redirect_error(auth, err)

    action = own.get("emulator_action")
    if action == "cancel":
        return _redirect_error(auth, errors.aad_user_declined())
    # A demo account button submits only user=<email> (a button sends its own name and value
    # and no other button's), so that alone is a complete sign-in.
    if action == "signin" or (action is None and "user" in own):
        email = (own.get("user") or own.get("email") or "").strip()
        if not EMAIL.match(email):
            return _signin(request, auth, email, "Enter a valid email address.")
        return _issue_code(state, auth, email)

    login_hint = params.get("login_hint", "").strip()
    if login_hint and EMAIL.match(login_hint):
        return _issue_code(state, auth, login_hint)
    if params.get("prompt") == "none":
        # No browser session exists in the emulator, so silent sign-in needs a hint.
        return _redirect_error(auth, errors.aad_login_required())
    return _signin(request, auth, login_hint)


@router.get("/{tenant}/oauth2/v2.0/authorize")
async def authorize(tenant: str, request: Request) -> Response:
    params: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        params.setdefault(key, value)
    return await _authorize(request, tenant, params)


@router.post("/{tenant}/oauth2/v2.0/authorize")
async def authorize_post(tenant: str, request: Request) -> Response:
    return await _authorize(request, tenant, await read_form(request))
