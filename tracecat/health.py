"""Health for orchestrators: `/healthz` says the process serves (liveness), `/readyz` that
what it depends on answers (the database, and Redis when REDIS_URL is set), else 503 naming
which; `/metrics` for Prometheus. None of them needs an API key or touches account data."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tracecat.deps import ResourcesDep

router = APIRouter(include_in_schema=False)
logger = logging.getLogger(__name__)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(resources: ResourcesDep) -> Response:
    problems = await resources.readiness.problems()
    if problems:
        said = ", ".join(f"{name} {problem}" for name, problem in problems.items())
        logger.warning("Not ready: %s", said)
        body: dict[str, Any] = {"detail": f"not ready: {said}", "unready": problems}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready"})


@router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
