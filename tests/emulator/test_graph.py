"""The Graph v1.0 Teams side, called over HTTPS with tokens from the real auth code flow."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from emulator_support import ALICE, BOB, GENERAL, GRAPH, SECOPS, messages_path

from tracecat.emulator.demo_data import channel_id_for, team_id_for
from tracecat.emulator.server import EmulatorServer

pytestmark = pytest.mark.filterwarnings("ignore:response_mode:UserWarning")

ALERTS = channel_id_for(SECOPS, "Alerts")
PRIVATE_TEAM = team_id_for("Executive Leadership")
Graph = Callable[..., httpx.Response]
Control = Callable[..., httpx.Response]


def assert_graph_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "innerError"}
    assert error["code"] == code
    inner = error["innerError"]
    assert set(inner) == {"date", "request-id", "client-request-id"}
    assert inner["request-id"] == response.headers["request-id"]
    assert inner["client-request-id"] == response.headers["client-request-id"]
    return error


def collect(graph: Graph, path: str, token: str) -> tuple[list[dict[str, Any]], int]:
    items, pages, url = [], 0, path
    while url:
        page = graph("GET", url, token)
        assert page.status_code == 200, page.text
        body = page.json()
        items += body["value"]
        pages += 1
        url = body.get("@odata.nextLink")
    return items, pages


def test_me_and_joined_teams_page_with_next_links(graph: Graph, alice_token: str) -> None:
    me = graph("GET", "/me", alice_token).json()
    assert me["userPrincipalName"] == ALICE and me["id"]

    first = graph("GET", "/me/joinedTeams", alice_token).json()
    assert len(first["value"]) == 2
    assert first["@odata.nextLink"].startswith("https://")
    assert "$skiptoken=" in first["@odata.nextLink"]
    teams, pages = collect(graph, "/me/joinedTeams", alice_token)
    assert pages == 2
    names = [team["displayName"] for team in teams]
    assert names == ["Security Operations", "Platform Engineering", "Tracecat Demo"]


def test_channels_page_and_percent_encoded_ids_resolve(
    graph: Graph, alice_token: str, control: Control
) -> None:
    # Six requests on one team in well under a second would exceed Teams' 4 per second.
    control("PATCH", "/config", json={"throttling": {"enabled": False}})
    channels, pages = collect(graph, f"/teams/{SECOPS}/channels", alice_token)
    assert pages == 3 and len({c["id"] for c in channels}) == 5
    assert channels[0]["displayName"] == "General"
    assert all(c["id"].startswith("19:") and c["id"].endswith("@thread.tacv2") for c in channels)

    control("PATCH", "/config", json={"page_sizes": {"channels": 10}})
    assert "@odata.nextLink" not in graph("GET", f"/teams/{SECOPS}/channels", alice_token).json()

    encoded = graph("GET", f"/teams/{SECOPS}/channels/{quote(GENERAL, safe='')}", alice_token)
    raw = graph("GET", f"/teams/{SECOPS}/channels/{GENERAL}", alice_token)
    assert encoded.status_code == raw.status_code == 200
    assert encoded.json()["id"] == raw.json()["id"] == GENERAL


def test_graph_errors_have_graph_shape(graph: Graph, alice_token: str) -> None:
    unknown_team = graph(
        "GET",
        "/teams/00000000-0000-0000-0000-000000000000/channels",
        alice_token,
        headers={"client-request-id": "trace-me"},
    )
    assert assert_graph_error(unknown_team, 404, "NotFound")["innerError"]["client-request-id"] == (
        "trace-me"
    )
    assert_graph_error(graph("GET", f"/teams/{PRIVATE_TEAM}", alice_token), 403, "Forbidden")
    unknown_channel = graph(
        "GET", f"/teams/{SECOPS}/channels/19%3Anope%40thread.tacv2", alice_token
    )
    assert_graph_error(unknown_channel, 404, "NotFound")
    assert_graph_error(graph("GET", "/me/nonsense", alice_token), 400, "BadRequest")
    bad_top = graph("GET", messages_path() + "?$top=500", alice_token)
    assert_graph_error(bad_top, 400, "BadRequest")


def test_missing_or_bad_token_is_401_with_challenge(
    emulator: EmulatorServer, http: httpx.Client, graph: Graph
) -> None:
    missing = http.get(f"{emulator.graph_url}/me")
    error = assert_graph_error(missing, 401, "InvalidAuthenticationToken")
    assert error["message"] == "Access token is empty."
    assert missing.headers["www-authenticate"].startswith("Bearer ")
    assert_graph_error(graph("GET", "/me", "not-a-jwt"), 401, "InvalidAuthenticationToken")


def test_token_without_the_needed_scope_is_403(
    graph: Graph, sign_in: Callable[..., dict[str, Any]]
) -> None:
    token = sign_in(ALICE, scopes=[f"{GRAPH}/User.Read"])["access_token"]
    assert graph("GET", "/me", token).status_code == 200
    error = assert_graph_error(graph("GET", "/me/joinedTeams", token), 403, "Forbidden")
    assert "Team.ReadBasic.All" in error["message"]
    send = graph("POST", messages_path(), token, json={"body": {"content": "hi"}})
    assert "ChannelMessage.Send" in assert_graph_error(send, 403, "Forbidden")["message"]


def test_send_with_mention_and_adaptive_card_is_stored_once(
    graph: Graph, alice_token: str, control: Control, sign_in: Callable[..., dict[str, Any]]
) -> None:
    bob = graph("GET", "/me", sign_in(BOB)["access_token"]).json()
    card = {"type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlock", "text": "Hi"}]}
    payload = {
        "subject": "Incident 42",
        "body": {
            "contentType": "html",
            "content": '<at id="0">Bob</at> please look <attachment id="card-1"></attachment>',
        },
        "mentions": [
            {
                "id": 0,
                "mentionText": "Bob",
                "mentioned": {
                    "user": {"id": bob["id"], "displayName": "Bob", "userIdentityType": "aadUser"}
                },
            }
        ],
        "attachments": [
            {
                "id": "card-1",
                "contentType": "application/vnd.microsoft.card.adaptive",
                "content": json.dumps(card),
            }
        ],
    }
    sent = graph("POST", messages_path(), alice_token, json=payload)
    assert sent.status_code == 201, sent.text
    message = sent.json()
    assert message["id"].isdigit() and message["etag"] == message["id"]
    assert message["replyToId"] is None and message["messageType"] == "message"
    assert message["channelIdentity"] == {"teamId": SECOPS, "channelId": GENERAL}
    assert message["from"]["user"]["displayName"] == "Alice"
    assert message["webUrl"].startswith("https://teams.microsoft.com/l/message/19%3A")
    assert message["mentions"][0]["mentioned"]["user"]["id"] == bob["id"]
    assert json.loads(message["attachments"][0]["content"]) == card

    fetched = graph("GET", f"{messages_path()}/{message['id']}", alice_token).json()
    assert fetched["body"] == payload["body"]
    stored = control("GET", "/messages").json()["messages"]
    assert [(m["id"], m["team_id"], m["channel_id"]) for m in stored] == [
        (message["id"], SECOPS, GENERAL)
    ]


@pytest.mark.parametrize(
    "payload",
    [
        {"subject": "no body"},
        {"body": {"contentType": "html", "content": "   "}},
        {
            "body": {"contentType": "html", "content": "hello, no tag"},
            "mentions": [
                {
                    "id": 0,
                    "mentionText": "Bob",
                    "mentioned": {"user": {"id": "x", "displayName": "Bob"}},
                }
            ],
        },
        {"body": {"contentType": "html", "content": '<at id="0">Bob</at>'}},
        {
            "body": {"contentType": "html", "content": "card without tag"},
            "attachments": [
                {
                    "id": "a",
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "content": "{}",
                }
            ],
        },
        {
            "body": {"contentType": "html", "content": '<attachment id="a"></attachment>'},
            "attachments": [
                {
                    "id": "a",
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "content": "[oops",
                }
            ],
        },
    ],
)
def test_invalid_messages_are_rejected_and_not_stored(
    graph: Graph, alice_token: str, control: Control, payload: dict[str, Any]
) -> None:
    assert_graph_error(graph("POST", messages_path(), alice_token, json=payload), 400, "BadRequest")
    assert control("GET", "/messages").json()["messages"] == []


def test_messages_list_newest_first_across_pages(
    graph: Graph, alice_token: str, control: Control
) -> None:
    control("PATCH", "/config", json={"throttling": {"enabled": False}})
    sent = [
        graph("POST", messages_path(), alice_token, json={"body": {"content": f"m{i}"}}).json()[
            "id"
        ]
        for i in range(5)
    ]
    first = graph("GET", f"{messages_path()}?$top=2", alice_token).json()
    assert "$top=2" in first["@odata.nextLink"]
    items, pages = collect(graph, f"{messages_path()}?$top=2", alice_token)
    assert pages == 3
    assert [m["id"] for m in items] == list(reversed(sent))


def test_replies_thread_under_their_root_message(
    graph: Graph, alice_token: str, control: Control
) -> None:
    control("PATCH", "/config", json={"throttling": {"enabled": False}})
    root = graph("POST", messages_path(), alice_token, json={"body": {"content": "root"}}).json()
    replies = f"{messages_path()}/{root['id']}/replies"
    answer = graph("POST", replies, alice_token, json={"body": {"content": "reply"}})
    assert answer.status_code == 201 and answer.json()["replyToId"] == root["id"]
    listed = graph("GET", replies, alice_token).json()["value"]
    assert [r["id"] for r in listed] == [answer.json()["id"]]
    assert graph("GET", f"{replies}/{answer.json()['id']}", alice_token).status_code == 200
    # A reply is not a root message of the channel.
    roots = graph("GET", messages_path(), alice_token).json()["value"]
    assert [m["id"] for m in roots] == [root["id"]]
    missing = graph(
        "POST", f"{messages_path()}/123/replies", alice_token, json={"body": {"content": "x"}}
    )
    assert_graph_error(missing, 404, "NotFound")


def test_second_send_to_a_channel_within_a_second_is_throttled(
    graph: Graph, alice_token: str, control: Control
) -> None:
    body = {"body": {"content": "hello"}}
    assert graph("POST", messages_path(), alice_token, json=body).status_code == 201
    throttled = graph("POST", messages_path(), alice_token, json=body)
    assert_graph_error(throttled, 429, "TooManyRequests")
    assert int(throttled.headers["retry-after"]) >= 1
    # The limit is per channel: another channel of the same team still accepts a message.
    assert graph("POST", messages_path(channel=ALERTS), alice_token, json=body).status_code == 201
    stats = control("GET", "/stats").json()
    assert stats["throttled"] == 1 and stats["messages_stored"] == 2
    route = "POST /v1.0/teams/{team_id}/channels/{channel_id}/messages"
    assert stats["graph_requests"][route] == {"201": 2, "429": 1}

    time.sleep(int(throttled.headers["retry-after"]))
    assert graph("POST", messages_path(), alice_token, json=body).status_code == 201


def test_team_request_limit(graph: Graph, alice_token: str, control: Control) -> None:
    control("PATCH", "/config", json={"throttling": {"team_requests_per_second": 2}})
    statuses = [graph("GET", f"/teams/{SECOPS}", alice_token).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    # Other teams have their own budget.
    assert graph("GET", f"/teams/{team_id_for('Tracecat Demo')}", alice_token).status_code == 200


def test_expired_and_revoked_access_tokens_are_refused(
    graph: Graph, sign_in: Callable[..., dict[str, Any]], control: Control
) -> None:
    alice, bob = sign_in(ALICE)["access_token"], sign_in(BOB)["access_token"]
    control("POST", f"/users/{ALICE}/expire-tokens")
    error = assert_graph_error(graph("GET", "/me", alice), 401, "InvalidAuthenticationToken")
    assert "expired" in error["message"]
    assert graph("GET", "/me", bob).status_code == 200
    control("POST", f"/users/{BOB}/revoke")
    assert_graph_error(graph("GET", "/me", bob), 401, "InvalidAuthenticationToken")
    # A token issued after the revocation works again.
    assert graph("GET", "/me", sign_in(BOB)["access_token"]).status_code == 200


def test_injected_graph_faults(
    emulator: EmulatorServer, graph: Graph, alice_token: str, control: Control, tls: Any
) -> None:
    control(
        "POST", "/faults", json={"target": "graph", "status": 503, "count": 2, "retry_after": 3}
    )
    for _ in range(2):
        failed = graph("GET", "/me", alice_token)
        assert_graph_error(failed, 503, "ServiceNotAvailable")
        assert failed.headers["retry-after"] == "3"
    assert graph("GET", "/me", alice_token).status_code == 200

    control(
        "POST",
        "/faults",
        json={"target": f"/v1.0/teams/{SECOPS}/channels", "status": 504, "delay_seconds": 0.5},
    )
    with httpx.Client(verify=tls, timeout=0.2) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.get(
            f"{emulator.graph_url}/teams/{SECOPS}/channels",
            headers={"Authorization": f"Bearer {alice_token}"},
        )
    assert control("GET", "/faults").json()["faults"] == []
