"""The control API under /_emulator: what tests use to arrange and inspect the emulator.

It is not a Microsoft API, so its errors are a plain {"error": "..."} body.

    GET    /_emulator                          where it listens, tenant, demo client id
    POST   /_emulator/reset                    forget users, tokens, messages, faults, counters
    GET    /_emulator/config                   see EmulatorConfig (tracecat/emulator/config.py)
    PATCH  /_emulator/config                   partial, e.g. {"throttling": {"enabled": false}}
    POST   /_emulator/faults                   {"target": "token"|"graph"|"/path/prefix",
                                                "status": 503, "count": 1, "retry_after": null,
                                                "delay_seconds": 0, "code": null, "message": null}
    GET    /_emulator/faults, DELETE /_emulator/faults
    GET    /_emulator/users
    POST   /_emulator/users/{email}/revoke     refresh and access tokens issued so far stop working
    POST   /_emulator/users/{email}/expire-tokens   access tokens issued so far count as expired
    GET    /_emulator/stats                    token requests by grant/outcome/user, Graph requests
                                                by route/status, 429s issued, messages stored
    GET    /_emulator/messages                 every stored message, replies included
    POST   /_emulator/apps                     {"client_id"?, "client_secret"?, "display_name"?,
                                                "redirect_uris": [...], "scopes"?}

Both listeners serve it, and a browser visiting any web page can reach the loopback one, so
every request that changes state (any method but GET, HEAD and OPTIONS) must:

  * carry `Content-Type: application/json`, even with no body (`POST /_emulator/reset`),
    else 415. A cross-site page can only send form or text/plain bodies without a CORS
    preflight, and the emulator answers no preflight;
  * carry no `Origin` header, or the origin of one of the emulator's own listeners
    (scheme://host:port as published, e.g. http://127.0.0.1:8401), else 403.

curl, httpx and other non-browser clients send no Origin, so they only need the header.
"""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from tracecat.emulator.constants import DEMO_APP_SCOPES, DEMO_CLIENT_ID
from tracecat.emulator.http_utils import emulator_state, graph_base, http_base, https_base
from tracecat.emulator.state import AppRegistration, FaultRule

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
DEFAULT_PORTS = {"http": 80, "https": 443}


class ControlError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL; None for anything else, such as "null"."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme]


async def refuse_cross_site(request: Request) -> None:
    """Guard for state-changing requests; see the module docstring."""
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    # Only the published listener URLs count, never the Host header: under DNS rebinding a
    # foreign page's Origin and Host name the same attacker host.
    own = {_origin(https_base(request)), _origin(http_base(request))} - {None}
    if origin is not None and _origin(origin) not in own:
        raise ControlError(f"cross-origin requests are refused (Origin: {origin[:200]})", 403)
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise ControlError(
            "the control API only accepts Content-Type: application/json, even with no body",
            415,
        )


router = APIRouter(prefix="/_emulator", dependencies=[Depends(refuse_cross_site)])


def control_error_response(exc: ControlError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise ControlError("the request body must be a JSON object") from exc
    if not isinstance(body, dict):
        raise ControlError("the request body must be a JSON object")
    return body


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = body.get(name, default)
    if value is default:
        return value
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ControlError(f"{name} has the wrong type")
    if not isinstance(value, kind):
        raise ControlError(f"{name} has the wrong type")
    return value


@router.get("")
async def info(request: Request) -> dict[str, Any]:
    state = emulator_state(request)
    return {
        "authority_host": https_base(request),
        "graph_url": graph_base(request),
        "http_url": http_base(request),
        "tenant_id": state.tenant_id,
        "tenant_domain": state.tenant_domain,
        "client_id": DEMO_CLIENT_ID,
    }


@router.post("/reset")
async def reset(request: Request) -> dict[str, str]:
    emulator_state(request).reset()
    return {"status": "reset"}


@router.get("/config")
async def get_config(request: Request) -> dict[str, Any]:
    return emulator_state(request).config.to_dict()


@router.patch("/config")
async def patch_config(request: Request) -> dict[str, Any]:
    patch = await _json_object(request)
    try:
        return emulator_state(request).patch_config(patch).to_dict()
    except (ValueError, TypeError) as exc:
        raise ControlError(str(exc)) from exc


@router.post("/faults", status_code=201)
async def add_fault(request: Request) -> dict[str, Any]:
    body = await _json_object(request)
    target = _field(body, "target", str, "")
    if not (target in ("token", "graph") or target.startswith("/")):
        raise ControlError("target must be 'token', 'graph' or a path starting with '/'")
    if target.startswith("/_emulator"):
        raise ControlError("the control API cannot be faulted")
    status = _field(body, "status", int, 503)
    if not 400 <= status <= 599:
        raise ControlError("status must be an HTTP error status (400-599)")
    count = _field(body, "count", int, 1)
    retry_after = _field(body, "retry_after", int, None)
    delay = float(_field(body, "delay_seconds", (int, float), 0.0))
    if count < 1 or (retry_after is not None and retry_after < 0) or not 0 <= delay <= 300:
        raise ControlError("count must be >= 1, retry_after >= 0 and delay_seconds in [0, 300]")
    rule = FaultRule(
        id=str(uuid.uuid4()),
        target=target,
        status=status,
        remaining=count,
        retry_after=retry_after,
        delay_seconds=delay,
        code=_field(body, "code", str, None),
        message=_field(body, "message", str, None),
    )
    return emulator_state(request).add_fault(rule).public()


@router.get("/faults")
async def list_faults(request: Request) -> dict[str, Any]:
    return {"faults": [rule.public() for rule in emulator_state(request).faults()]}


@router.delete("/faults", status_code=204)
async def clear_faults(request: Request) -> Response:
    emulator_state(request).clear_faults()
    return Response(status_code=204)


@router.get("/users")
async def list_users(request: Request) -> dict[str, Any]:
    return {"users": [user.public() for user in emulator_state(request).users()]}


@router.post("/users/{email}/revoke")
async def revoke_user(email: str, request: Request) -> dict[str, Any]:
    user = emulator_state(request).revoke_user(email)
    if user is None:
        raise ControlError(f"no user {email!r} has signed in", 404)
    return {**user.public(), "tokens_valid_from": user.tokens_valid_from}


@router.post("/users/{email}/expire-tokens")
async def expire_user_tokens(email: str, request: Request) -> dict[str, Any]:
    user = emulator_state(request).expire_user_access_tokens(email)
    if user is None:
        raise ControlError(f"no user {email!r} has signed in", 404)
    return {**user.public(), "access_tokens_expired_before": user.access_tokens_expired_before}


@router.get("/stats")
async def stats(request: Request) -> dict[str, Any]:
    return emulator_state(request).stats()


@router.get("/messages")
async def messages(request: Request) -> dict[str, Any]:
    return {"messages": [m.public() for m in emulator_state(request).all_messages()]}


@router.post("/apps", status_code=201)
async def register_app(request: Request) -> dict[str, Any]:
    body = await _json_object(request)
    redirect_uris = _field(body, "redirect_uris", list, [])
    if not all(isinstance(uri, str) and uri for uri in redirect_uris):
        raise ControlError("redirect_uris must be a list of URLs")
    scopes = _field(body, "scopes", list, list(DEMO_APP_SCOPES))
    client_id = _field(body, "client_id", str, None) or str(uuid.uuid4())
    try:
        uuid.UUID(client_id)
    except ValueError as exc:
        raise ControlError("client_id must be a GUID, like Entra application ids") from exc
    app = AppRegistration(
        client_id=client_id,
        client_secret=_field(body, "client_secret", str, None) or secrets.token_urlsafe(30),
        display_name=_field(body, "display_name", str, None) or f"Emulator app {int(time.time())}",
        redirect_uris=list(redirect_uris),
        scopes=tuple(str(s) for s in scopes),
    )
    return emulator_state(request).register_app(app).public()
