"""Request helpers shared by the identity, Graph and control routers."""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.responses import JSONResponse

from tracecat.emulator.errors import AadError, GraphApiError
from tracecat.emulator.state import EmulatorState


def emulator_state(request: Request) -> EmulatorState:
    state: EmulatorState = request.app.state.emulator
    return state


def https_base(request: Request) -> str:
    """Where the HTTPS listener is published (issuer, token endpoint, Graph)."""
    state = emulator_state(request)
    return state.https_base or str(request.base_url).rstrip("/")


def http_base(request: Request) -> str:
    """Where browsers are sent: the plain-HTTP loopback listener, which needs no CA trust."""
    state = emulator_state(request)
    return state.http_base or str(request.base_url).rstrip("/")


def graph_base(request: Request) -> str:
    return f"{https_base(request)}/v1.0"


def raw_path(request: Request) -> str:
    """The path exactly as the client sent it: still percent-encoded, dot segments kept."""
    raw = request.scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0]
    return raw or request.url.path


async def read_form(request: Request) -> dict[str, str]:
    """Parse an application/x-www-form-urlencoded body; the first value of a repeated key wins.

    Parsed by hand because python-multipart, which FastAPI's Form needs, is not a dependency.
    """
    body = (await request.body()).decode("utf-8", errors="replace")
    form: dict[str, str] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        form.setdefault(key, value)
    return form


def aad_error_response(request: Request, err: AadError) -> JSONResponse:
    now = emulator_state(request).clock.utcnow()
    body = err.body(
        https_base(request), request.state.request_id, request.state.client_request_id, now
    )
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def graph_error_response(request: Request, err: GraphApiError) -> JSONResponse:
    now = emulator_state(request).clock.utcnow()
    body = err.body(request.state.request_id, request.state.client_request_id, now)
    return JSONResponse(body, status_code=err.status, headers=err.headers)
