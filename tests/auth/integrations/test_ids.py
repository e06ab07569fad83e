"""Ids are path segments, never paths: whatever a caller puts in a team, channel or message
id, Graph only ever sees the shapes our routes are meant to call."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import httpx
import pytest

from tests.conftest import Api
from tests.utils.flows import ApiUser, connect
from tracecat.auth.integrations.microsoft import MicrosoftTeamsClient
from tracecat.exceptions import BadRequestError

BASE = "/auth/integrations/microsoft"
# Dot segments as a caller may write them in our URL: plain, percent-encoded in either case,
# mixed, and encoded again (a proxy or Graph may decode once more).
DOT_SEGMENTS = [
    ".", "..", "%2e", "%2E", "%2e%2e", "%2E%2e", ".%2e", "%2E.", "%252e%252e", "%252E.",
    ".%252e", "%25252e%25252E", "a%252fb", "%255c",
]  # fmt: skip
# Everything Graph may receive from us: {id} is one segment that is no dot segment.
GRAPH_SHAPES = [
    "GET /v1.0/me",
    "GET /v1.0/me/joinedTeams",
    "GET /v1.0/teams/{id}/channels",
    "GET /v1.0/teams/{id}/channels/{id}/messages",
    "POST /v1.0/teams/{id}/channels/{id}/messages",
    "POST /v1.0/teams/{id}/channels/{id}/messages/{id}/replies",
]


def _is_one_segment(raw: str) -> bool:
    decoded = raw
    for _ in range(5):
        if decoded in ("", ".", "..") or "/" in decoded or "\\" in decoded:
            return False
        decoded = unquote(decoded)
    return True


def _fits_a_shape(method: str, path: str) -> bool:
    segments = path.split("/")
    for shape in GRAPH_SHAPES:
        shape_method, shape_path = shape.split(" ")
        expected = shape_path.split("/")
        if (
            shape_method == method
            and len(expected) == len(segments)
            and all(
                _is_one_segment(got) if want == "{id}" else got == want
                for want, got in zip(expected, segments, strict=True)
            )
        ):
            return True
    return False


def _graph_log(api: Api) -> list[dict[str, object]]:
    return api.control("GET", "/stats").json()["graph_request_log"]


def _raw(api: Api, user: ApiUser, method: str, path: str) -> tuple[int, dict[str, object]]:
    """Send the path byte for byte: an HTTP client library would resolve `..` itself."""
    url = urlsplit(api.url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
    try:
        body = json.dumps({"content": "hello"}) if method == "POST" else None
        headers = {**user.headers, "Content-Type": "application/json"}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


@pytest.fixture
def connected(api: Api) -> Iterator[tuple[httpx.Client, ApiUser, str, str, str]]:
    user = api.user("analyst@example.com")
    with api.browser() as browser:
        assert connect(browser, api.url, user, "alice@contoso.example").status_code == 200
        team = browser.get(f"{BASE}/teams", headers=user.headers).json()[0]["id"]
        channel = browser.get(f"{BASE}/teams/{team}/channels", headers=user.headers).json()[0]
        sent = browser.post(
            f"{BASE}/teams/{team}/channels/{channel['id']}/messages",
            headers=user.headers,
            json={"content": "first"},
        )
        assert sent.status_code == 201
        yield browser, user, team, channel["id"], sent.json()["id"]


def test_graph_sees_only_the_shapes_our_routes_call(
    api: Api, connected: tuple[httpx.Client, ApiUser, str, str, str]
) -> None:
    browser, user, team, channel, message = connected
    replied = browser.post(
        f"{BASE}/teams/{team}/channels/{channel}/messages/{message}/replies",
        headers=user.headers,
        json={"content": "a reply"},
    )
    assert replied.status_code == 201
    log = _graph_log(api)
    assert {(entry["method"], entry["status"]) for entry in log} >= {("GET", 200), ("POST", 201)}
    assert all(_fits_a_shape(str(e["method"]), str(e["path"])) for e in log), log


def test_dot_segment_ids_are_refused_before_any_graph_call(
    api: Api, connected: tuple[httpx.Client, ApiUser, str, str, str]
) -> None:
    _, user, team, channel, message = connected
    before = len(_graph_log(api))
    for evil in DOT_SEGMENTS:
        _assert_refused(api, user, team, channel, message, evil)
    assert len(_graph_log(api)) == before  # nothing reached Graph


def _assert_refused(
    api: Api, user: ApiUser, team: str, channel: str, message: str, evil: str
) -> None:
    calls = [
        ("GET", f"{BASE}/teams/{evil}/channels", "team_id"),
        ("GET", f"{BASE}/teams/{evil}/channels/{channel}/messages", "team_id"),
        ("GET", f"{BASE}/teams/{team}/channels/{evil}/messages", "channel_id"),
        ("POST", f"{BASE}/teams/{evil}/channels/{channel}/messages", "team_id"),
        ("POST", f"{BASE}/teams/{team}/channels/{evil}/messages", "channel_id"),
        ("POST", f"{BASE}/teams/{team}/channels/{channel}/messages/{evil}/replies", "message_id"),
        ("POST", f"{BASE}/teams/{evil}/channels/{channel}/messages/{message}/replies", "team_id"),
    ]
    for method, path, name in calls:
        status, body = _raw(api, user, method, path)
        assert status == 400, (method, path, status, body)
        assert str(body["detail"]).startswith(f"{name} is not a valid id"), (path, body)


def test_an_unencoded_slash_still_matches_no_route(
    api: Api, connected: tuple[httpx.Client, ApiUser, str, str, str]
) -> None:
    _, user, team, _, _ = connected
    before = len(_graph_log(api))
    for path in (f"{BASE}/teams/a%2Fb/channels", f"{BASE}/teams/{team}/channels/a/b/messages"):
        status, _ = _raw(api, user, "GET", path)
        assert status == 404
    assert len(_graph_log(api)) == before


async def test_the_python_client_refuses_dot_segments_too(api: Api) -> None:
    before = len(_graph_log(api))
    async with MicrosoftTeamsClient("not-a-token", settings=api.settings) as teams:
        for call in (
            lambda: teams.list_channels(".."),
            lambda: teams.list_channel_messages("team", "%2e%2E"),
            lambda: teams.send_message("team", ".", "hello"),
            lambda: teams.reply_to_message("team", "channel", "..", "hello"),
        ):
            with pytest.raises(BadRequestError):
                await call()
    assert len(_graph_log(api)) == before
