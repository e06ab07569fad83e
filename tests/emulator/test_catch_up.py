"""The Graph reads a notified app uses to catch up: $expand=replies and messages/delta."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from emulator_support import GENERAL, SECOPS, messages_path
from subscription_support import FAST, Control, Graph
from test_graph import assert_graph_error

pytestmark = pytest.mark.filterwarnings("ignore:response_mode:UserWarning")
CONTROL_MESSAGES = f"/teams/{SECOPS}/channels/{quote(GENERAL, safe='')}/messages"


@pytest.fixture(autouse=True)
def fast(control: Control) -> None:
    control("PATCH", "/config", json=FAST)


def post(control: Control, content: str, reply_to: str | None = None) -> str:
    body = {"content": content, **({"reply_to": reply_to} if reply_to else {})}
    message_id: str = control("POST", CONTROL_MESSAGES, json=body).json()["id"]
    return message_id


def test_list_with_expanded_replies(graph: Graph, control: Control, alice_token: str) -> None:
    root = post(control, "root")
    first, second = post(control, "r1", root), post(control, "r2", root)
    plain = graph("GET", messages_path(), alice_token).json()["value"]
    assert "replies" not in plain[0]
    expanded = graph("GET", f"{messages_path()}?$expand=replies", alice_token).json()["value"]
    assert [r["id"] for r in expanded[0]["replies"]] == [second, first]
    bad = graph("GET", f"{messages_path()}?$expand=hostedContents", alice_token)
    assert_graph_error(bad, 400, "BadRequest")


def test_delta_pages_then_yields_only_new_root_messages(
    graph: Graph, control: Control, alice_token: str
) -> None:
    control("PATCH", "/config", json={"page_sizes": {"messages": 2}})
    ids = [post(control, f"m{i}") for i in range(3)]
    post(control, "a reply is not a root", ids[0])
    seen, url = [], f"{messages_path()}/delta"
    while True:
        page = graph("GET", url, alice_token).json()
        seen += [m["id"] for m in page["value"]]
        if "@odata.deltaLink" in page:
            delta = page["@odata.deltaLink"]
            break
        url = page["@odata.nextLink"]
    assert seen == ids
    assert graph("GET", delta, alice_token).json()["value"] == []
    newer = post(control, "new")
    again = graph("GET", delta, alice_token).json()
    assert [m["id"] for m in again["value"]] == [newer]
    assert graph("GET", again["@odata.deltaLink"], alice_token).json()["value"] == []
    bad = graph("GET", f"{messages_path()}/delta?$deltatoken=nope", alice_token)
    assert_graph_error(bad, 400, "BadRequest")
