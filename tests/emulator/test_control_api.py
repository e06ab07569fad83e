"""The control API is no cross-site target: state changes need JSON and no foreign Origin."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from emulator_support import ALICE, CONTROL_HEADERS

from tracecat.emulator.server import EmulatorServer

FAULT = {"target": "graph", "status": 503}


def snapshot(control: Callable[..., httpx.Response]) -> dict[str, Any]:
    """Everything the refused requests below would have changed."""
    return {
        "faults": control("GET", "/faults").json(),
        "config": control("GET", "/config").json(),
        "users": control("GET", "/users").json(),
    }


def listeners(emulator: EmulatorServer) -> list[str]:
    return [emulator.authority_host, emulator.http_url]


def body_as(content_type: str, content: bytes = b"") -> dict[str, Any]:
    return {"content": content, "headers": {"Content-Type": content_type}}


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        # What any web page can send cross-site without a CORS preflight.
        ("POST", "/faults", body_as("text/plain", b'{"target": "graph"}')),
        ("POST", "/reset", body_as("text/plain")),
        ("PATCH", "/config", {"data": {"access_token_lifetime": "60"}}),
        ("POST", f"/users/{ALICE}/revoke", body_as("multipart/form-data; boundary=x")),
        # No Content-Type at all: curl -X POST without -H.
        ("POST", "/reset", {}),
        ("DELETE", "/faults", {}),
        ("PATCH", "/config", body_as("application/json-seq", b"{}")),
    ],
)
def test_state_changes_need_a_json_content_type(
    emulator: EmulatorServer,
    http: httpx.Client,
    control: Callable[..., httpx.Response],
    sign_in: Callable[..., dict[str, Any]],
    method: str,
    path: str,
    kwargs: dict[str, Any],
) -> None:
    sign_in(ALICE)
    control("POST", "/faults", json={**FAULT, "target": "/v1.0/nothing"})
    before = snapshot(control)
    for base in listeners(emulator):
        refused = http.request(method, f"{base}/_emulator{path}", **kwargs)
        assert refused.status_code == 415, refused.text
        assert set(refused.json()) == {"error"}
        assert "application/json" in refused.json()["error"]
    assert snapshot(control) == before


def test_json_content_type_with_no_body_and_a_charset_is_accepted(
    emulator: EmulatorServer, http: httpx.Client, control: Callable[..., httpx.Response]
) -> None:
    control("POST", "/faults", json=FAULT)
    json_utf8 = {"Content-Type": "application/json; charset=utf-8"}
    cleared = http.delete(f"{emulator.http_url}/_emulator/faults", headers=json_utf8)
    assert cleared.status_code == 204
    assert control("GET", "/faults").json() == {"faults": []}
    reset = http.post(f"{emulator.authority_host}/_emulator/reset", headers=CONTROL_HEADERS)
    assert reset.json() == {"status": "reset"}


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "null",  # sandboxed frames and file: pages
        "http://127.0.0.1:1",
        "http://localhost",
        "not a url",
    ],
)
def test_a_foreign_origin_is_refused_on_both_listeners(
    emulator: EmulatorServer,
    http: httpx.Client,
    control: Callable[..., httpx.Response],
    origin: str,
) -> None:
    before = snapshot(control)
    for base in listeners(emulator):
        headers = {"Origin": origin}
        refused = http.post(f"{base}/_emulator/faults", json=FAULT, headers=headers)
        assert refused.status_code == 403, refused.text
        assert set(refused.json()) == {"error"}
        refused = http.post(f"{base}/_emulator/reset", headers={**CONTROL_HEADERS, **headers})
        assert refused.status_code == 403, refused.text
        # Reading stays open; without CORS headers a foreign page cannot see the answer anyway.
        assert http.get(f"{base}/_emulator/faults", headers=headers).status_code == 200
    assert snapshot(control) == before


def test_the_right_host_with_the_wrong_scheme_or_port_is_foreign(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    swapped = [
        f"http://127.0.0.1:{emulator.https_port}",
        f"https://127.0.0.1:{emulator.http_port}",
    ]
    for base in listeners(emulator):
        for origin in swapped:
            refused = http.post(f"{base}/_emulator/faults", json=FAULT, headers={"Origin": origin})
            assert refused.status_code == 403, (base, origin)


def test_the_emulators_own_origins_are_accepted_on_both_listeners(
    emulator: EmulatorServer, http: httpx.Client, control: Callable[..., httpx.Response]
) -> None:
    added = 0
    for base in listeners(emulator):
        for origin in listeners(emulator):
            response = http.post(f"{base}/_emulator/faults", json=FAULT, headers={"Origin": origin})
            assert response.status_code == 201, response.text
            added += 1
    assert len(control("GET", "/faults").json()["faults"]) == added
