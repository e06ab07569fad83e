"""The yardstick for our API's overhead: a bare FastAPI app that makes the same Graph calls.

GET /teams answers the user's joined teams: `/me/joinedTeams` and every `@odata.nextLink`,
through one pooled async httpx client, with a token given at start. No auth, no database, no
cache, no middleware: what any FastAPI forwarder in front of Graph must at least do. Served by
uvicorn with the same defaults as `serve`.

    BENCH_GRAPH_URL=… BENCH_GRAPH_TOKEN=… BENCH_CA_BUNDLE=… python -m bench.forwarder PORT
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request


def create_forwarder(graph_url: str, token: str, ca_bundle: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        verify = ssl.create_default_context(cafile=ca_bundle)
        async with httpx.AsyncClient(verify=verify, timeout=30.0) as client:
            app.state.graph = client
            yield

    app = FastAPI(lifespan=lifespan)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/teams")
    async def teams(request: Request) -> list[dict[str, Any]]:
        client: httpx.AsyncClient = request.app.state.graph
        items: list[dict[str, Any]] = []
        url: str | None = f"{graph_url}/me/joinedTeams"
        while url:
            page = (await client.get(url, headers=headers)).raise_for_status().json()
            items.extend(page.get("value", []))
            url = page.get("@odata.nextLink")
        return items

    return app


if __name__ == "__main__":
    environ = os.environ
    app = create_forwarder(
        environ["BENCH_GRAPH_URL"], environ["BENCH_GRAPH_TOKEN"], environ["BENCH_CA_BUNDLE"]
    )
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, access_log=False)
