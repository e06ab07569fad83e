"""`GET /auth/integrations/audit` as a user sees it, after real flows against the emulator:
connects (and why one was refused), disconnects, a grant Microsoft refused, pages walked with
the cursor, other users' events never shown, bad input a 422. Both databases."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from tests.audit.support import AUDIT, audit_page, events, names, stored_events
from tests.auth.integrations.test_refresh import connect_inside_margin
from tests.conftest import Api
from tests.utils.flows import connect, query, sign_in, start_connect
from tracecat.audit.models import AuditRecord
from tracecat.db import Database

BASE = "/auth/integrations/microsoft"
MS_USER = "alice@contoso.example"
EVENT_KEYS = {
    "id",
    "occurred_at",
    "event",
    "outcome",
    "actor",
    "user_id",
    "subject",
    "client_address",
    "detail",
}


def test_connect_and_disconnect_are_listed_newest_first(api: Api) -> None:
    user = api.user("analyst@example.com")
    with api.browser() as browser:
        assert connect(browser, api.url, user, MS_USER).status_code == 200
        assert browser.delete(f"{BASE}/disconnect", headers=user.headers).status_code == 204
        assert browser.delete(f"{BASE}/disconnect", headers=user.headers).status_code == 404

    found = events(api.url, user)
    assert names(found) == [
        "integration.disconnected",  # once: the second disconnect changed nothing
        "connect.completed",
        "connect.started",
        "api_key.created",
    ]
    assert all(set(event) == EVENT_KEYS for event in found)
    times = [datetime.fromisoformat(event["occurred_at"]) for event in found]
    assert times == sorted(times, reverse=True)
    assert {event["user_id"] for event in found} == {user.id}
    assert {event["subject"] for event in found} == {"analyst@example.com"}
    for event in found[:3]:
        assert event["client_address"] == "127.0.0.1"
        assert event["outcome"] == "success" and event["actor"] == "user"
    assert found[1]["detail"] == f"Microsoft account {MS_USER}"  # which account was attached
    created = found[3]
    assert created["actor"] == "cli" and created["client_address"] is None
    assert created["detail"] == f"key {user.api_key[:8]}…"


def test_refused_connects_say_why(api: Api) -> None:
    user = api.user("analyst@example.com")
    with api.browser() as browser:
        state = query(start_connect(browser, api.url, user))["state"]
        declined = browser.get(
            f"{BASE}/callback",
            params={
                "error": "access_denied",
                "error_description": "AADSTS65004: User declined to consent to access the app.",
                "state": state,
            },
        )
        assert declined.status_code == 400
        # A forged answer sent to the user's browser while a flow of theirs is pending.
        callback_url = sign_in(start_connect(browser, api.url, user), MS_USER)
        forged = callback_url.replace(f"state={query(callback_url)['state']}", "state=forged")
        assert browser.get(forged).status_code == 400
        assert browser.get(callback_url).status_code == 200
        assert browser.get(callback_url).status_code == 400  # replayed

    found = events(api.url, user)
    refused = [event for event in found if event["event"] == "connect.refused"]
    assert [(event["detail"], event["actor"]) for event in refused] == [
        ("unknown_state", "unknown"),  # the forgery: the sender is not known to be the user
        ("access_denied AADSTS65004", "user"),  # declined at Microsoft, in the user's browser
    ]
    assert all(e["outcome"] == "refused" and e["client_address"] == "127.0.0.1" for e in refused)
    assert "connect.completed" in names(found)
    assert "User declined" not in str(found)  # Microsoft's code, not the redirect's words
    # The replay came from a browser with no flow pending any more: recorded, for no user.
    replays = [row for row in stored_events(api.database_url) if row.user_id is None]
    assert [(row.event, row.detail) for row in replays] == [("connect.refused", "unknown_state")]


def test_a_flow_finished_in_another_browser_is_told_to_its_owner(api: Api) -> None:
    victim = api.user("victim@example.com")
    attacker = api.user("attacker@example.com")
    with api.browser() as attacker_browser, api.browser() as victim_browser:
        callback_url = sign_in(start_connect(attacker_browser, api.url, attacker), MS_USER)
        start_connect(victim_browser, api.url, victim)
        assert victim_browser.get(callback_url).status_code == 400

    refused = [e for e in events(api.url, attacker) if e["event"] == "connect.refused"]
    assert [(e["detail"], e["actor"], e["outcome"]) for e in refused] == [
        ("other_browser", "unknown", "refused")
    ]
    assert "connect.refused" not in names(events(api.url, victim))


def test_a_forged_state_from_nowhere_names_no_user(api: Api) -> None:
    user = api.user("analyst@example.com")
    response = httpx.get(f"{api.url}{BASE}/callback", params={"state": "forged", "code": "x"})
    assert response.status_code == 400
    assert "connect.refused" not in names(events(api.url, user))
    (row,) = [row for row in stored_events(api.database_url) if row.event == "connect.refused"]
    assert row.user_id is None and row.subject is None
    assert (row.detail, row.outcome) == ("unknown_state", "refused")
    assert row.client_address == "127.0.0.1"


@pytest.mark.parametrize("aadsts", [50173, 700082])
def test_a_grant_microsoft_refused_is_recorded_once(api: Api, aadsts: int) -> None:
    api.control("PATCH", "/config", json={"revoked_error_code": aadsts})
    user = connect_inside_margin(api)
    api.control("POST", f"/users/{MS_USER}/revoke")
    for _ in range(2):  # the second call is refused without asking Microsoft again
        assert httpx.get(f"{api.url}{BASE}/teams", headers=user.headers).status_code == 401

    found = events(api.url, user)
    refused = [event for event in found if event["event"] == "grant.refused"]
    assert len(refused) == 1
    assert refused[0]["detail"] == f"invalid_grant AADSTS{aadsts}"
    assert refused[0]["actor"] == "microsoft" and refused[0]["outcome"] == "refused"
    assert refused[0]["subject"] == "analyst@example.com"
    assert names(found)[0] == "grant.refused"


def test_pages_walk_every_event_once(api: Api) -> None:
    user = api.user("analyst@example.com")
    with api.browser() as browser:
        for _ in range(3):
            assert connect(browser, api.url, user, MS_USER).status_code == 200
            assert browser.delete(f"{BASE}/disconnect", headers=user.headers).status_code == 204
    everything = events(api.url, user)
    assert len(everything) == 10

    walked: list[dict] = []
    page = audit_page(api.url, user, limit=2)
    while True:
        assert len(page["events"]) <= 2
        walked += page["events"]
        if page["next"] is None:
            break
        page = audit_page(api.url, user, limit=2, before=page["next"])
    assert [e["id"] for e in walked] == [e["id"] for e in everything]
    # The default page holds them all, and so does a page of exactly that many.
    assert audit_page(api.url, user)["events"] == everything
    exact = audit_page(api.url, user, limit=10)
    assert exact["events"] == everything and exact["next"] is None


def test_another_users_events_are_never_shown(api: Api) -> None:
    alice, bob = api.user("alice@example.com"), api.user("bob@example.com")
    with api.browser() as browser_a, api.browser() as browser_b:
        assert connect(browser_a, api.url, alice, MS_USER).status_code == 200
        assert connect(browser_b, api.url, bob, "bob@contoso.example").status_code == 200
    alices, bobs = events(api.url, alice), events(api.url, bob)
    assert {e["user_id"] for e in alices} == {alice.id}
    assert {e["user_id"] for e in bobs} == {bob.id}
    # Bob's cursor only says where to start: Alice still sees only hers.
    cursor = audit_page(api.url, bob, limit=1)["next"]
    older = audit_page(api.url, alice, before=cursor)["events"]
    assert {e["user_id"] for e in older} <= {alice.id}


@pytest.mark.parametrize(
    "params",
    [
        {"before": "not-a-cursor"},
        {"before": "!!!"},
        {"before": base64.urlsafe_b64encode(b"2026-01-01|nothex").decode()},
        {"before": base64.urlsafe_b64encode(b"2026-01-01T00:00:00|" + b"0" * 32).decode()},
        {"before": base64.urlsafe_b64encode(b"\xff\xfe").decode()},
        {"before": "x" * 201},
        {"limit": 0},
        {"limit": 501},
        {"limit": "many"},
    ],
)
def test_bad_input_is_422_json(api: Api, params: dict) -> None:
    user = api.user("analyst@example.com")
    response = httpx.get(f"{api.url}{AUDIT}", headers=user.headers, params=params)
    assert response.status_code == 422, response.text
    assert "detail" in response.json()


def test_an_api_key_is_required_and_the_answer_is_in_openapi(api: Api) -> None:
    assert httpx.get(f"{api.url}{AUDIT}").status_code == 401
    assert httpx.get(f"{api.url}{AUDIT}", headers={"Authorization": "Bearer x"}).status_code == 401
    schema = httpx.get(f"{api.url}/openapi.json").json()
    answer = schema["paths"][AUDIT]["get"]["responses"]["200"]["content"]["application/json"]
    assert answer["schema"]["$ref"].endswith("/AuditPageResponse")
    page = schema["components"]["schemas"]["AuditPageResponse"]
    assert set(page["properties"]) == {"events", "next"}
    assert set(schema["components"]["schemas"]["AuditEventResponse"]["properties"]) == EVENT_KEYS


def test_an_event_a_newer_version_recorded_is_still_shown(api: Api) -> None:
    """During a rolling upgrade an older instance reads events it has no name for."""
    user = api.user("analyst@example.com")

    async def insert() -> None:
        database = Database(api.database_url)
        try:
            async with database.session() as session, session.begin():
                session.add(
                    AuditRecord(
                        occurred_at=datetime.now(UTC),
                        user_id=uuid.UUID(user.id),
                        event="calendar.connected",
                        outcome="later",
                        actor="robot",
                    )
                )
        finally:
            await database.dispose()

    asyncio.run(insert())
    (event,) = [e for e in events(api.url, user) if e["event"] == "calendar.connected"]
    assert event["outcome"] == "later" and event["actor"] == "robot"
