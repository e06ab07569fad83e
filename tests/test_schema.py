"""The OpenAPI schema tells the truth: schemathesis (fixed seed, a time budget of about a
minute and a half) drives the live app with a connected user and finds no 5xx, no status
the schema does not list, and no answer that breaks it; every route's errors are listed.
A longer run: `python -m bench.schema_fuzz`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_settings
from tests.utils.flows import ApiUser, connect, create_user
from tests.utils.server import LiveServer, free_port
from tracecat.app import create_app
from tracecat.db import upgrade_schema
from tracecat.emulator.server import EmulatorServer
from tracecat.openapi import CALLBACK_PARAMETERS, ROUTE_ERRORS

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    ]
)
SEED = 42
BUDGET_SECONDS = 90


@pytest.fixture
def fuzzed_app(emulator: EmulatorServer, tmp_path: Path) -> Iterator[tuple[str, ApiUser]]:
    """An app of its own (SQLite, generous rate limits) with a connected user: what the
    fuzzer does (messages sent, subscriptions tried) touches no other test."""
    database_url = f"sqlite:///{tmp_path / 'fuzz.db'}"
    upgrade_schema(database_url)
    port = free_port()
    settings = make_settings(
        emulator, database_url, tmp_path, port, tracecat_public_url=f"http://127.0.0.1:{port}"
    )
    server = LiveServer(create_app(settings), port=port).start()
    user = create_user(database_url, "fuzz@example.com")
    with httpx.Client() as browser:
        assert connect(browser, server.url, user, "alice@contoso.example").status_code == 200
    yield server.url, user
    server.stop()


def test_schemathesis_finds_nothing_the_schema_does_not_say(
    fuzzed_app: tuple[str, ApiUser], tmp_path: Path
) -> None:
    url, user = fuzzed_app
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "st"),
            "run",
            f"{url}/openapi.json",
            "--checks",
            CHECKS,
            "--seed",
            str(SEED),
            "--max-time",
            str(BUDGET_SECONDS),
            "--workers",
            "1",
            "--header",
            f"Authorization: Bearer {user.api_key}",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=BUDGET_SECONDS + 120,
        cwd=tmp_path,  # its reports and cache land here, not in the checkout
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def test_every_route_lists_its_errors(fuzzed_app: tuple[str, ApiUser]) -> None:
    url, _ = fuzzed_app
    schema = httpx.get(f"{url}/openapi.json").json()
    operations = {(m, p) for p, ops in schema["paths"].items() for m in ops}
    assert operations == set(ROUTE_ERRORS), "document the errors of new routes in openapi.py"
    for path, ops in schema["paths"].items():
        for operation in ops.values():
            errors = {s: r for s, r in operation["responses"].items() if s >= "400"}
            assert errors, path
            for answer in errors.values():
                body = answer["content"]["application/json"]["schema"]
                assert body == {"$ref": "#/components/schemas/ErrorResponse"}
    callback = schema["paths"]["/auth/integrations/microsoft/callback"]["get"]
    declared = {p["name"] for p in callback["parameters"] if p["in"] == "query"}
    assert {name for name, _ in CALLBACK_PARAMETERS} <= declared
    throttled = schema["paths"]["/auth/integrations/microsoft/teams"]["get"]["responses"]["429"]
    assert "Retry-After" in throttled["headers"]
