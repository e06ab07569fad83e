"""The fault kinds of POST /_emulator/faults beyond plain errors: slow answers, non-JSON
bodies, next links that never end or lead elsewhere, and expired-token 401s."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from emulator_support import CONTROL_HEADERS, SECOPS, messages_path

from tracecat.emulator.server import EmulatorServer

pytestmark = pytest.mark.filterwarnings("ignore:response_mode:UserWarning")

Graph = Callable[..., httpx.Response]
Control = Callable[..., httpx.Response]
JOINED = "/me/joinedTeams"


def add_fault(control: Control, **fault: Any) -> dict[str, Any]:
    response = control("POST", "/faults", json=fault)
    assert response.status_code == 201
    return response.json()


def follow(graph: Graph, token: str, path: str, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` pages, following @odata.nextLink."""
    pages, url = [], path
    while url and len(pages) < limit:
        page = graph("GET", url, token)
        assert page.status_code == 200, page.text
        pages.append(page.json())
        url = page.json().get("@odata.nextLink")
    return pages


def test_a_slow_fault_answers_normally_but_late(
    emulator: EmulatorServer, graph: Graph, alice_token: str, control: Control, tls: Any
) -> None:
    control("PATCH", "/config", json={"throttling": {"enabled": False}})
    rule = add_fault(control, kind="slow", target="/v1.0/teams", method="POST", delay_seconds=0.6)
    assert rule["kind"] == "slow" and rule["method"] == "POST" and rule["status"] is None
    # Reads of the same path are not slowed: the rule is for POSTs only.
    assert graph("GET", messages_path(), alice_token).status_code == 200
    url = f"{emulator.graph_url}{messages_path()}"
    headers = {"Authorization": f"Bearer {alice_token}"}
    with httpx.Client(verify=tls, timeout=0.2) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post(url, headers=headers, json={"body": {"content": "late"}})
    # Handled at once: the message is there although its client gave up.
    stored = control("GET", "/messages").json()["messages"]
    assert [m["chat_message"]["body"]["content"] for m in stored] == ["late"]
    assert control("GET", "/faults").json()["faults"] == []

    add_fault(control, kind="slow", target="graph", delay_seconds=0.3)
    started = time.monotonic()
    me = graph("GET", "/me", alice_token)
    assert me.status_code == 200 and me.json()["mail"]
    assert time.monotonic() - started >= 0.3
    assert me.headers["request-id"]


def test_a_non_json_fault_sends_its_body_instead(
    graph: Graph, alice_token: str, control: Control
) -> None:
    add_fault(
        control,
        kind="non_json",
        target="graph",
        body="not json",
        content_type="text/html",
        count=2,
    )
    for _ in range(2):
        page = graph("GET", JOINED, alice_token)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.text == "not json"
        with pytest.raises(ValueError):
            page.json()
    assert graph("GET", JOINED, alice_token).json()["value"]

    rule = add_fault(control, kind="non_json", target="graph", status=502, retry_after=4)
    assert rule["status"] == 502 and rule["body"].startswith("<!doctype html>")
    gateway = graph("GET", "/me", alice_token)
    assert gateway.status_code == 502 and gateway.headers["retry-after"] == "4"
    assert "<html>" in gateway.text
    log = control("GET", "/stats").json()["graph_request_log"]
    assert log[-1] == {"method": "GET", "path": "/v1.0/me", "status": 502}


def test_a_non_json_fault_on_the_token_endpoint(
    emulator: EmulatorServer, http: httpx.Client, control: Control
) -> None:
    add_fault(control, kind="non_json", target="token", status=503, body="upstream down")
    response = http.post(
        f"{emulator.authority_host}/common/oauth2/v2.0/token",
        data={"grant_type": "refresh_token", "refresh_token": "x"},
    )
    assert response.status_code == 503 and response.text == "upstream down"


def test_an_endless_next_link_always_leads_to_another_page(
    emulator: EmulatorServer, graph: Graph, alice_token: str, control: Control
) -> None:
    add_fault(control, kind="endless_next_link", target=f"/v1.0{JOINED}", count=1000)
    # Not a list route: /me neither uses the rule up nor gets a link.
    assert "@odata.nextLink" not in graph("GET", "/me", alice_token).json()
    pages = follow(graph, alice_token, JOINED, limit=30)
    assert len(pages) == 30
    links = [page["@odata.nextLink"] for page in pages]
    assert len(set(links)) == 30, "every link is new, so a client cannot spot a loop by URL"
    assert all(link.startswith(emulator.graph_url) for link in links)
    # The real teams come first, then empty pages that still link on.
    assert [len(page["value"]) for page in pages[:4]] == [2, 1, 0, 0]
    control("DELETE", "/faults")


def test_an_endless_next_link_fault_counts_pages(
    graph: Graph, alice_token: str, control: Control
) -> None:
    add_fault(control, kind="endless_next_link", target="graph", count=3)
    pages = follow(graph, alice_token, JOINED, limit=100)
    # Three pages link on (the third past the end); the one after them ends the list.
    assert len(pages) == 4 and "@odata.nextLink" not in pages[-1]
    assert sum(len(page["value"]) for page in pages) == 3
    assert control("GET", "/faults").json()["faults"] == []


def test_a_foreign_next_link_points_to_another_host(
    emulator: EmulatorServer, graph: Graph, alice_token: str, control: Control
) -> None:
    rule = add_fault(control, kind="foreign_next_link", target="graph")
    assert rule["next_link_base"] == "https://evil.example"
    first = graph("GET", JOINED, alice_token).json()
    link = urlsplit(first["@odata.nextLink"])
    assert (link.scheme, link.netloc, link.path) == (
        "https",
        "evil.example",
        "/v1.0/me/joinedTeams",
    )
    assert link.query.startswith("$skiptoken=")
    # Used up: the next page links back to the emulator as usual.
    assert (
        graph("GET", JOINED, alice_token).json()["@odata.nextLink"].startswith(emulator.graph_url)
    )

    # Even a page that is the last one gets a foreign link.
    control("PATCH", "/config", json={"page_sizes": {"channels": 10}})
    add_fault(
        control,
        kind="foreign_next_link",
        target=f"/v1.0/teams/{SECOPS}/channels",
        next_link_base="http://127.0.0.1:1/",
    )
    channels = graph("GET", f"/teams/{SECOPS}/channels", alice_token).json()
    assert len(channels["value"]) == 5
    assert channels["@odata.nextLink"].startswith(f"http://127.0.0.1:1/v1.0/teams/{SECOPS}/")


def test_invalid_authentication_token_on_the_next_graph_calls(
    graph: Graph, alice_token: str, control: Control
) -> None:
    add_fault(control, target="graph", status=401, count=2)
    for _ in range(2):
        refused = graph("GET", "/me", alice_token)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert graph("GET", "/me", alice_token).status_code == 200


def test_faults_are_listed_with_every_field(control: Control) -> None:
    add_fault(control, target="token", status=503)
    (rule,) = control("GET", "/faults").json()["faults"]
    assert rule == {
        "id": rule["id"],
        "kind": "error",
        "target": "token",
        "method": None,
        "status": 503,
        "count": 1,
        "retry_after": None,
        "delay_seconds": 0.0,
        "code": None,
        "message": None,
        "body": None,
        "content_type": None,
        "next_link_base": None,
    }


@pytest.mark.parametrize(
    ("fault", "complaint"),
    [
        ({"kind": "flaky", "target": "graph"}, "kind must be one of"),
        ({"kind": "slow", "target": "graph"}, "delay_seconds > 0"),
        ({"kind": "slow", "target": "graph", "delay_seconds": 1, "status": 500}, "status"),
        ({"kind": "error", "target": "graph", "body": "x"}, "body does not apply"),
        ({"kind": "non_json", "target": "graph", "code": "X"}, "code does not apply"),
        ({"kind": "non_json", "target": "graph", "status": 101}, "between 200 and 599"),
        ({"kind": "endless_next_link", "target": "token"}, "under /v1.0"),
        ({"kind": "endless_next_link", "target": "/common"}, "under /v1.0"),
        ({"kind": "endless_next_link", "target": "graph", "delay_seconds": 1}, "delay_seconds"),
        ({"kind": "foreign_next_link", "target": "graph", "next_link_base": "evil"}, "scheme"),
        (
            {"kind": "foreign_next_link", "target": "graph", "next_link_base": "https://e.x/p"},
            "scheme",
        ),
        ({"target": "graph", "method": "FETCH"}, "method must be one of"),
        ({"target": "/_emulator/reset"}, "cannot be faulted"),
    ],
)
def test_invalid_faults_are_refused(
    emulator: EmulatorServer, http: httpx.Client, fault: dict[str, Any], complaint: str
) -> None:
    url = f"{emulator.authority_host}/_emulator/faults"
    refused = http.post(url, json=fault, headers=CONTROL_HEADERS)
    assert refused.status_code == 400, refused.text
    assert complaint in refused.json()["error"]
    assert http.get(url).json() == {"faults": []}
