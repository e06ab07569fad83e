"""The emulator's state on disk: what a person keeps across restarts of a persisting emulator."""

from __future__ import annotations

import logging
import ssl
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msal
import pytest
from emulator_support import (
    ALICE,
    BOB,
    CONTROL_HEADERS,
    GENERAL,
    SECOPS,
    messages_path,
    msal_sign_in,
    refresh,
)

from tests.utils.webhook import running_receiver
from tracecat.emulator.persistence import FLUSH_INTERVAL_SECONDS, restore, snapshot
from tracecat.emulator.server import EmulatorServer
from tracecat.emulator.state import EmulatorState

pytestmark = pytest.mark.filterwarnings("ignore:response_mode:UserWarning")


@dataclass
class Session:
    server: EmulatorServer
    http: httpx.Client
    browser: httpx.Client

    def control(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = f"{self.server.authority_host}/_emulator{path}"
        headers = {**CONTROL_HEADERS, **kwargs.pop("headers", {})}
        response = self.http.request(method, url, headers=headers, **kwargs)
        assert response.status_code < 400, response.text
        return response

    def graph(self, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        return self.http.request(
            method, f"{self.server.graph_url}{path}", headers=headers, **kwargs
        )

    def sign_in(self, email: str) -> dict[str, Any]:
        app = msal.ConfidentialClientApplication(
            self.server.client_id,
            client_credential=self.server.client_secret,
            authority=f"{self.server.authority_host}/common",
            instance_discovery=False,
            http_client=self.http,
        )
        return msal_sign_in(app, self.browser, email)


@contextmanager
def running(data_dir: Path, persist: bool = True) -> Iterator[Session]:
    """A fresh emulator process' worth of server on `data_dir`, stopped on exit."""
    with EmulatorServer(data_dir, persist=persist) as server:
        tls = ssl.create_default_context(cafile=str(server.ca_bundle))
        with (
            httpx.Client(verify=tls, timeout=10) as http,
            httpx.Client(follow_redirects=False, timeout=10) as browser,
        ):
            yield Session(server, http, browser)


def state_file(data_dir: Path) -> Path:
    return data_dir / "emulator" / "state.json"


def test_users_grants_and_messages_survive_a_restart(tmp_path: Path) -> None:
    with running(tmp_path) as before:
        before.control("PATCH", "/config", json={"refresh_token_rotation": "strict"})
        alice = before.sign_in(ALICE)
        rotated = refresh(before.http, before.server, alice["refresh_token"])
        assert rotated.status_code == 200, rotated.text
        access_token = rotated.json()["access_token"]
        sent = before.graph("POST", messages_path(), access_token, json={"body": {"content": "hi"}})
        assert sent.status_code == 201, sent.text
        bob = before.sign_in(BOB)
        before.control("POST", f"/users/{BOB}/revoke")
    assert stat.S_IMODE(state_file(tmp_path).stat().st_mode) == 0o600

    with running(tmp_path) as after:
        assert after.server.authority_host != before.server.authority_host  # really a new server
        assert after.control("GET", "/config").json()["refresh_token_rotation"] == "strict"
        assert {u["email"] for u in after.control("GET", "/users").json()["users"]} == {ALICE, BOB}
        # The access token minted before the restart still reads Graph.
        me = after.graph("GET", "/me", access_token)
        assert me.status_code == 200 and me.json()["mail"] == ALICE
        listed = after.graph("GET", messages_path(), access_token).json()["value"]
        assert [m["id"] for m in listed] == [sent.json()["id"]]
        # Strict rotation remembers the first refresh token was used; its successor works.
        reused = refresh(after.http, after.server, alice["refresh_token"])
        assert reused.status_code == 400 and reused.json()["error_codes"] == [70000]
        assert refresh(after.http, after.server, rotated.json()["refresh_token"]).status_code == 200
        # Bob's revocation outlives the restart, for refresh and access tokens alike.
        revoked = refresh(after.http, after.server, bob["refresh_token"])
        assert revoked.status_code == 400 and revoked.json()["error_codes"] == [50173]
        assert after.graph("GET", "/me", bob["access_token"]).status_code == 401


def test_changes_are_saved_while_running_and_reset_forgets_them(tmp_path: Path) -> None:
    with running(tmp_path) as session:
        session.sign_in(ALICE)
        # Saved in the background soon after the change, not only on stop.
        deadline = time.monotonic() + 10 * FLUSH_INTERVAL_SECONDS
        while not state_file(tmp_path).exists():
            assert time.monotonic() < deadline, "the state was never saved"
            time.sleep(0.05)
        session.control("POST", "/reset")
        assert not state_file(tmp_path).exists()
    # Nothing changed after the reset, so nothing was written back on stop.
    assert not state_file(tmp_path).exists()
    with running(tmp_path) as after:
        assert after.control("GET", "/users").json()["users"] == []


def test_a_corrupt_state_file_starts_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_file(tmp_path).parent.mkdir(parents=True)
    for content in (b'{"format": 1, "users": [', b'{"format": 1, "users": "x"}', b"\xff"):
        state_file(tmp_path).write_bytes(content)
        with caplog.at_level(logging.WARNING), running(tmp_path) as session:
            assert session.control("GET", "/users").json()["users"] == []
            session.sign_in(ALICE)
        assert "starting empty" in caplog.text
        caplog.clear()
    # The bad file was replaced by a good one on the first change.
    with running(tmp_path) as session:
        assert [u["email"] for u in session.control("GET", "/users").json()["users"]] == [ALICE]


def test_without_persist_nothing_is_written(tmp_path: Path) -> None:
    with running(tmp_path, persist=False) as session:
        session.sign_in(ALICE)
    assert not state_file(tmp_path).exists()
    assert {p.name for p in (tmp_path / "emulator").iterdir()} >= {"ca.pem", "signing-key.pem"}
    assert not list((tmp_path / "emulator").glob("*state*"))


def test_subscriptions_survive_a_restart_and_keep_notifying(tmp_path: Path) -> None:
    with running_receiver() as hook:
        with running(tmp_path) as before:
            token = before.sign_in(ALICE)["access_token"]
            now = before.control("GET", "/clock").json()["now"]
            expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 7200))
            body = {
                "changeType": "created",
                "notificationUrl": f"{hook.url}/notify",
                "lifecycleNotificationUrl": f"{hook.url}/lifecycle",
                "resource": f"/teams/{SECOPS}/channels/{GENERAL}/messages",
                "expirationDateTime": expiry,
                "clientState": "kept",
            }
            created = before.graph("POST", "/subscriptions", token, json=body)
            assert created.status_code == 201, created.text
        with running(tmp_path) as after:
            fetched = after.graph("GET", f"/subscriptions/{created.json()['id']}", token)
            assert fetched.status_code == 200, fetched.text
            # Everything but @odata.context, which names the new server's address.
            assert {**fetched.json(), "@odata.context": ""} == {
                **created.json(),
                "@odata.context": "",
            }
            path = f"/teams/{SECOPS}/channels/{quote(GENERAL, safe='')}/messages"
            after.control("POST", path, json={"content": "after the restart"})
            hook.wait_for(lambda seen: len(seen) == 1)
            assert hook.received()[0].json()["value"][0]["clientState"] == "kept"


def test_a_snapshot_from_before_subscriptions_still_loads() -> None:
    state = EmulatorState()
    _, data = snapshot(state)
    del data["subscriptions"]
    restore(state, data)
    assert state.subscriptions.report() == []
