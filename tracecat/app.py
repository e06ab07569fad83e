"""The FastAPI application factory."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tracecat.audit.router import router as audit_router
from tracecat.auth.integrations.router import router as integrations_router
from tracecat.clock import SYSTEM_CLOCK, Clock
from tracecat.config import Settings
from tracecat.exceptions import DecryptionError, SignInRequiredError, TracecatError
from tracecat.health import router as health_router
from tracecat.logs import redact_access_log
from tracecat.middleware import EdgeMiddleware
from tracecat.notifications.api import router as subscriptions_router
from tracecat.notifications.api import webhooks as subscription_webhooks
from tracecat.notifications.router import router as notifications_router
from tracecat.openapi import document_errors
from tracecat.resources import AppResources
from tracecat.web import present
from tracecat.web.demo_receiver import router as demo_receiver_router
from tracecat.web.pages import Pages, static_files, wants_html
from tracecat.web.router import router as web_router
from tracecat.web.subscription_pages import router as web_subscriptions_router

logger = logging.getLogger(__name__)


def create_app(settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> FastAPI:
    """Build the app; `settings.microsoft_redirect_uri` should already be resolved. `clock`
    is what "now" is for the tokens and how refresh retries pause (tests inject one)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redact_access_log()
        resources = AppResources(settings, clock)
        app.state.resources = resources
        resources.start()
        # What start-up built (modules, models, the app) lives as long as the process: kept
        # out of the collector's generations, a full collection no longer walks it (in
        # bench.overhead the teams mean's excess over its median fell from 0.7 to 0.2 ms).
        gc.freeze()
        try:
            yield
        finally:
            await resources.aclose()

    app = FastAPI(title="tracecat-integrations", lifespan=lifespan)
    app.add_middleware(EdgeMiddleware, max_body_bytes=settings.tracecat_max_body_bytes)
    app.include_router(integrations_router)
    app.include_router(audit_router)
    app.include_router(subscriptions_router)
    app.include_router(notifications_router)
    app.webhooks.include_router(subscription_webhooks)  # documented, never served
    app.include_router(web_router)
    app.include_router(web_subscriptions_router)
    app.include_router(demo_receiver_router)
    app.include_router(health_router)
    app.mount("/static", static_files(), name="static")
    _add_error_handlers(app)
    document_errors(app)
    # Templates are read-only once loaded: the app holds them, not its lifespan.
    pages = Pages()
    app.state.pages = pages

    return app


def _is_page(request: Request) -> bool:
    """A person's browser on a page of the web UI (not the API, not Microsoft's webhooks)."""
    return wants_html(request) and not request.url.path.startswith(("/auth/", "/webhooks/"))


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is `{"detail": ...}` with its status; nothing else reaches the client
    (anything unhandled is answered by `EdgeMiddleware`)."""

    @app.exception_handler(TracecatError)
    async def tracecat_error(request: Request, exc: TracecatError) -> Response:
        if _is_page(request):
            if isinstance(exc, SignInRequiredError):
                return RedirectResponse("/", status_code=303)
            pages: Pages = request.app.state.pages
            return pages.message(
                "That did not work", present.error_in_words(exc), status=exc.status_code
            )
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        # Drop the offending input from the echo: it may be a secret pasted in the wrong field.
        errors = [{k: v for k, v in e.items() if k not in ("input", "ctx")} for e in exc.errors()]
        if _is_page(request):
            fields = ", ".join(str(e["loc"][-1]) for e in errors if e.get("loc"))
            pages: Pages = request.app.state.pages
            return pages.message(
                "That did not work",
                f"Some of what the form sent is not valid: {fields}.",
                status=422,
            )
        return JSONResponse({"detail": errors}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    @app.exception_handler(SQLAlchemyTimeoutError)
    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(ConnectionError)
    async def database_unavailable(_: Request, exc: Exception) -> JSONResponse:
        logger.error("Database unavailable: %s", type(exc).__name__)
        return JSONResponse(
            {"detail": "the database is unavailable or busy: retry shortly"},
            503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(DecryptionError)
    async def decryption_error(_: Request, exc: DecryptionError) -> JSONResponse:
        logger.error("%s", exc)
        return JSONResponse({"detail": "stored secrets cannot be decrypted: see server log"}, 503)
