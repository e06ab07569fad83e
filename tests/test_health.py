"""`/healthz` is liveness, `/readyz` readiness: 200 when the database (and Redis, when set)
answer, else 503 naming which, never with a password (both databases)."""

from __future__ import annotations

import httpx

from tests.conftest import Api
from tests.utils.server import LiveServer
from tracecat.app import create_app

UNREACHABLE_REDIS = "redis://:hunter2@127.0.0.1:1/0"


def test_ready_when_what_it_needs_answers(api: Api) -> None:
    assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{api.url}/readyz").json() == {"status": "ready"}
    with api.another_server(redis_url="redis://127.0.0.1:6379/0") as url:
        assert httpx.get(f"{url}/readyz").status_code == 200


def test_not_ready_names_what_does_not_answer(api: Api) -> None:
    with api.another_server(redis_url=UNREACHABLE_REDIS) as url:
        answer = httpx.get(f"{url}/readyz")
        assert answer.status_code == 503 and answer.headers["retry-after"]
        assert set(answer.json()["unready"]) == {"redis"}
        assert "redis" in answer.json()["detail"] and "hunter2" not in answer.text
        assert httpx.get(f"{url}/healthz").status_code == 200  # alive all the same


def test_not_ready_without_the_database(api: Api) -> None:
    gone = "postgresql://root:hunter2@127.0.0.1:1/tracecat"
    settings = api.settings.model_copy(update={"database_url": gone})
    server = LiveServer(create_app(settings, clock=api.clock)).start()
    try:
        answer = httpx.get(f"{server.url}/readyz")
        assert answer.status_code == 503
        assert set(answer.json()["unready"]) == {"database"} and "hunter2" not in answer.text
    finally:
        server.stop()
