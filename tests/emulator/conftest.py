"""One real emulator for the whole session; each test starts from a reset state."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msal
import pytest
from emulator_support import ALICE, CONTROL_HEADERS, msal_sign_in

from tests.utils.webhook import Receiver, running_receiver
from tracecat.emulator.server import EmulatorServer


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("microsoft-emulator")


@pytest.fixture(scope="session")
def emulator(data_dir: Path) -> Iterator[EmulatorServer]:
    with EmulatorServer(data_dir) as server:
        yield server


@pytest.fixture(scope="session")
def tls(emulator: EmulatorServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(emulator.ca_bundle))


@pytest.fixture
def http(emulator: EmulatorServer, tls: ssl.SSLContext) -> Iterator[httpx.Client]:
    """A client trusting only the emulator's CA; the state is reset before each test."""
    with httpx.Client(verify=tls, timeout=10) as client:
        reset = client.post(f"{emulator.authority_host}/_emulator/reset", headers=CONTROL_HEADERS)
        reset.raise_for_status()
        yield client


@pytest.fixture
def control(emulator: EmulatorServer, http: httpx.Client) -> Callable[..., httpx.Response]:
    """Call the control API: control("PATCH", "/config", json={...})."""

    def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**CONTROL_HEADERS, **kwargs.pop("headers", {})}
        url = f"{emulator.authority_host}/_emulator{path}"
        response = http.request(method, url, headers=headers, **kwargs)
        assert response.status_code < 400, response.text
        return response

    return call


@pytest.fixture
def msal_app(emulator: EmulatorServer, http: httpx.Client) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        emulator.client_id,
        client_credential=emulator.client_secret,
        authority=f"{emulator.authority_host}/common",
        instance_discovery=False,
        http_client=http,
    )


@pytest.fixture
def browse() -> Iterator[httpx.Client]:
    """What a person's browser does: plain HTTP to the loopback listener, no redirects followed."""
    with httpx.Client(follow_redirects=False, timeout=10) as client:
        yield client


@pytest.fixture
def sign_in(
    msal_app: msal.ConfidentialClientApplication, browse: httpx.Client
) -> Callable[..., dict[str, Any]]:
    """The whole auth code flow through MSAL, the browser step done with login_hint."""

    def run(email: str = ALICE, scopes: list[str] | None = None) -> dict[str, Any]:
        return msal_sign_in(msal_app, browse, email, scopes)

    return run


@pytest.fixture
def graph(emulator: EmulatorServer, http: httpx.Client) -> Callable[..., httpx.Response]:
    """Call Graph with a bearer token: graph("GET", "/me", token)."""

    def call(method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
        url = path if path.startswith("https://") else f"{emulator.graph_url}{path}"
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        return http.request(method, url, headers=headers, **kwargs)

    return call


@pytest.fixture
def alice_token(sign_in: Callable[..., dict[str, Any]]) -> str:
    return sign_in(ALICE)["access_token"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A subscriber's webhook on a loopback port (webhook_receiver.py)."""
    with running_receiver() as hook:
        yield hook
