"""`serve` as a process: SIGTERM lets a request in flight finish, then exits and accepts
nothing more; `--workers N` runs N processes behind one port (both databases)."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Api
from tests.utils.flows import ApiUser, connect, create_user
from tests.utils.polling import eventually
from tests.utils.server import ServeProcess

MS_USER = "alice@contoso.example"
TEAMS = "/auth/integrations/microsoft/teams"


@pytest.fixture
def serve_env(api: Api, upgraded_url: str) -> Iterator[dict[str, str]]:
    yield api.serve_environment(upgraded_url) | {"TRACECAT_LOG_LEVEL": "INFO"}


def connected(service: ServeProcess, upgraded_url: str) -> ApiUser:
    user = create_user(upgraded_url, f"analyst-{time.monotonic_ns()}@example.com")
    with httpx.Client() as browser:
        assert connect(browser, service.url, user, MS_USER).status_code == 200
    return user


def test_sigterm_lets_the_request_in_flight_finish(
    api: Api, serve_env: dict[str, str], upgraded_url: str
) -> None:
    service = ServeProcess(serve_env).wait_ready()
    user = connected(service, upgraded_url)
    api.control(
        "POST", "/faults", json={"kind": "slow", "target": "graph", "delay_seconds": 3, "count": 5}
    )
    answers: list[httpx.Response] = []
    calling = threading.Thread(
        target=lambda: answers.append(
            httpx.get(f"{service.url}{TEAMS}", headers=user.headers, timeout=30)
        )
    )
    calling.start()
    eventually(lambda: any("joinedTeams" in line for line in graph_log(api)))
    service.terminate()  # while Graph takes its time answering
    calling.join(timeout=40)
    assert answers and answers[0].status_code == 200, answers
    assert service.wait() == 128 + signal.SIGTERM  # as a shell reports a SIGTERM
    assert "Application shutdown complete" in service.output()  # its last lines written
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{service.url}/healthz", timeout=2)


def graph_log(api: Api) -> list[str]:
    stats = api.control("GET", "/stats").json()
    return [f"{r['method']} {r['path']}" for r in stats.get("graph_request_log", [])]


def test_workers_are_processes_sharing_one_port(
    serve_env: dict[str, str], upgraded_url: str
) -> None:
    service = ServeProcess(serve_env, "--workers", "2").wait_ready()
    try:
        user = connected(service, upgraded_url)  # the flow's steps may meet either worker
        for _ in range(20):
            assert httpx.get(f"{service.url}{TEAMS}", headers=user.headers).status_code == 200
        assert httpx.get(f"{service.url}/readyz").status_code == 200
    finally:
        service.stop()
    started = set(re.findall(r"Started server process \[(\d+)\]", service.output()))
    assert len(started) == 2, started


def test_workers_must_be_at_least_one(serve_env: dict[str, str]) -> None:
    service = ServeProcess(serve_env, "--workers", "0")
    assert service.wait(timeout=30) == 2
    assert "--workers" in service.output()
