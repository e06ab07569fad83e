"""The emulator's ASGI app: identity, Graph and control routers over one shared state."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tracecat.emulator import (
    control,
    control_notifications,
    graph,
    graph_subscriptions,
    identity,
    token_endpoint,
)
from tracecat.emulator.errors import (
    AadError,
    GraphApiError,
    graph_fault,
    graph_method_not_allowed,
    graph_unknown_segment,
)
from tracecat.emulator.fault_rules import RequestKind, request_kind
from tracecat.emulator.faults import answer
from tracecat.emulator.http_utils import aad_error_response, graph_error_response, raw_path
from tracecat.emulator.state import EmulatorState


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
    app.include_router(control_notifications.router)
    app.include_router(graph.router)
    app.include_router(graph_subscriptions.router)
    app.include_router(graph.userinfo_router)
    app.include_router(token_endpoint.router)
    app.include_router(identity.router)

    @app.exception_handler(AadError)
    async def on_aad_error(request: Request, err: AadError) -> Response:
        return aad_error_response(request, err)

    @app.exception_handler(GraphApiError)
    async def on_graph_error(request: Request, err: GraphApiError) -> Response:
        return graph_error_response(request, err)

    @app.exception_handler(control.ControlError)
    async def on_control_error(request: Request, err: control.ControlError) -> Response:
        return control.control_error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request_kind(request.method, request.url.path) != RequestKind.GRAPH:
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
        if exc.status_code == 404:
            segment = request.url.path.rstrip("/").rsplit("/", 1)[-1]
            return graph_error_response(request, graph_unknown_segment(segment))
        if exc.status_code == 405:
            return graph_error_response(request, graph_method_not_allowed())
        err = graph_fault(exc.status_code, None, str(exc.detail), None)
        return graph_error_response(request, err)

    @app.middleware("http")
    async def correlate(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request_id = str(uuid.uuid4())
        client_request_id = request.headers.get("client-request-id") or request_id
        request.state.request_id = request_id
        request.state.client_request_id = client_request_id
        kind = request_kind(request.method, request.url.path)
        if kind is None:
            return await call_next(request)  # the control API: never faulted, not counted
        response = await answer(request, kind, call_next)
        if kind == RequestKind.GRAPH:
            # Graph's own correlation headers; the identity platform names its own differently.
            response.headers["request-id"] = request_id
            response.headers["client-request-id"] = client_request_id
            state.stats.record_graph_request(
                _route_label(request), response.status_code, request.method, raw_path(request)
            )
        else:
            response.headers["x-ms-request-id"] = request_id
            response.headers["client-request-id"] = client_request_id
        return response

    return app
