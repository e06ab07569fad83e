"""The emulator's ASGI app: identity, Graph and control routers over one shared state."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tracecat.emulator import control, graph, identity
from tracecat.emulator.errors import (
    AadError,
    GraphError,
    graph_fault,
    graph_method_not_allowed,
    graph_unknown_segment,
)
from tracecat.emulator.faults import injected_fault, request_kind
from tracecat.emulator.http_utils import https_base
from tracecat.emulator.state import EmulatorState


def _aad_response(request: Request, err: AadError) -> JSONResponse:
    body = err.body(https_base(request), request.state.request_id, request.state.client_request_id)
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def _graph_response(request: Request, err: GraphError) -> JSONResponse:
    body = err.body(request.state.request_id, request.state.client_request_id)
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def _route_label(request: Request) -> str:
    route = request.scope.get("route")
    template = getattr(route, "path", None) or request.url.path
    return f"{request.method} {template}"


def create_emulator_app(state: EmulatorState) -> FastAPI:
    app = FastAPI(
        title="Tracecat Microsoft emulator", docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.emulator = state
    app.include_router(control.router)
    app.include_router(graph.router)
    app.include_router(graph.userinfo_router)
    app.include_router(identity.router)

    @app.exception_handler(AadError)
    async def on_aad_error(request: Request, err: AadError) -> Response:
        return _aad_response(request, err)

    @app.exception_handler(GraphError)
    async def on_graph_error(request: Request, err: GraphError) -> Response:
        return _graph_response(request, err)

    @app.exception_handler(control.ControlError)
    async def on_control_error(request: Request, err: control.ControlError) -> Response:
        return control.control_error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request_kind(request) != "graph":
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
        if exc.status_code == 404:
            segment = request.url.path.rstrip("/").rsplit("/", 1)[-1]
            return _graph_response(request, graph_unknown_segment(segment))
        if exc.status_code == 405:
            return _graph_response(request, graph_method_not_allowed())
        return _graph_response(request, graph_fault(exc.status_code, None, str(exc.detail), None))

    @app.middleware("http")
    async def correlate(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request_id = str(uuid.uuid4())
        client_request_id = request.headers.get("client-request-id") or request_id
        request.state.request_id = request_id
        request.state.client_request_id = client_request_id
        kind = request_kind(request)
        fault = await injected_fault(request, kind) if kind else None
        if isinstance(fault, GraphError):
            response: Response = _graph_response(request, fault)
        elif isinstance(fault, AadError):
            response = _aad_response(request, fault)
        else:
            response = await call_next(request)
        if kind == "graph":
            # Graph's own correlation headers; the identity platform names its own differently.
            response.headers["request-id"] = request_id
            response.headers["client-request-id"] = client_request_id
            state.record_graph_request(
                _route_label(request),
                response.status_code,
                request.method,
                request.scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0],
            )
        elif kind is not None:
            response.headers["x-ms-request-id"] = request_id
            response.headers["client-request-id"] = client_request_id
        return response

    return app
