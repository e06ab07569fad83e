"""Change and lifecycle notifications reaching a subscriber's webhook, retries and knobs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from emulator_support import ALICE, BOB, GENERAL, SECOPS, messages_path
from subscription_support import FAST, Control, Graph, iso_in, subscribe

from tests.utils.webhook import Receiver
from tracecat.emulator.constants import TENANT_ID

pytestmark = pytest.mark.filterwarnings("ignore:response_mode:UserWarning")
CONTROL_MESSAGES = f"/teams/{SECOPS}/channels/{quote(GENERAL, safe='')}/messages"
ROOT = f"teams('{SECOPS}')/channels('{GENERAL}')"


@pytest.fixture(autouse=True)
def fast(control: Control) -> None:
    control("PATCH", "/config", json=FAST)


def notifications_stats(control: Control) -> dict[str, Any]:
    stats: dict[str, Any] = control("GET", "/stats").json()["notifications"]
    return stats


def _stats_when(
    control: Control, ready: Callable[[dict[str, Any]], bool], kind: str = "change"
) -> dict[str, Any]:
    """The `kind` ("change" or "lifecycle") stats once `ready` holds (polled with a deadline)."""
    deadline = time.monotonic() + 10
    while not ready(change := notifications_stats(control)[kind]):
        assert time.monotonic() < deadline, change
        time.sleep(0.02)
    return change


def test_a_message_and_a_reply_by_someone_else_are_notified(
    graph: Graph,
    control: Control,
    receiver: Receiver,
    alice_token: str,
    sign_in: Callable[..., dict[str, Any]],
) -> None:
    subscription = subscribe(graph, control, receiver, alice_token)
    bob = sign_in(BOB)["access_token"]
    sent = graph("POST", messages_path(), bob, json={"body": {"content": "alert!"}}).json()
    receiver.wait_for(lambda seen: len(seen) == 1)
    (note,) = receiver.received("/notify")
    assert note.content_type.startswith("application/json")
    assert note.json() == {
        "value": [
            {
                "subscriptionId": subscription["id"],
                "subscriptionExpirationDateTime": subscription["expirationDateTime"],
                "changeType": "created",
                "clientState": "secret-state",
                "resource": f"{ROOT}/messages('{sent['id']}')",
                "resourceData": {
                    "id": sent["id"],
                    "@odata.type": "#Microsoft.Graph.chatMessage",
                    "@odata.id": f"{ROOT}/messages('{sent['id']}')",
                },
                "tenantId": TENANT_ID,
            }
        ]
    }
    reply_path = f"{messages_path()}/{sent['id']}/replies"
    reply = graph("POST", reply_path, bob, json={"body": {"content": "ack"}}).json()
    receiver.wait_for(lambda seen: len(seen) == 2)
    item = receiver.received()[1].json()["value"][0]
    assert item["resource"] == f"{ROOT}/messages('{sent['id']}')/replies('{reply['id']}')"
    assert item["resourceData"]["id"] == reply["id"]
    # The receiver records a request before it answers: wait for the emulator to see it too.
    stats = _stats_when(control, lambda change: change["delivered"] == 2)
    assert stats["sent"] == 2 and stats["by_outcome"] == {"202": 2}
    (listed,) = control("GET", "/subscriptions").json()["subscriptions"]
    assert listed["delivery"]["delivered"] == 2 and listed["delivery"]["last_status"] == "202"


def test_the_control_route_posts_as_someone_else_and_notifies(
    graph: Graph, control: Control, receiver: Receiver, alice_token: str
) -> None:
    subscribe(graph, control, receiver, alice_token)
    posted = control("POST", CONTROL_MESSAGES, json={"content": "from outside"}).json()
    assert posted["sender"] != ALICE
    reply = control(
        "POST",
        CONTROL_MESSAGES,
        json={
            "content": "<b>re</b>",
            "content_type": "html",
            "from": BOB,
            "reply_to": posted["id"],
        },
    ).json()
    assert reply["sender"] == BOB and reply["reply_to_id"] == posted["id"]
    receiver.wait_for(lambda seen: len(seen) == 2)
    ids = {n.json()["value"][0]["resourceData"]["id"] for n in receiver.received()}
    assert ids == {posted["id"], reply["id"]}
    # Stored exactly like a Graph POST: Alice reads both through Graph.
    fetched = graph("GET", f"{messages_path()}/{posted['id']}", alice_token).json()
    assert fetched["body"] == {"contentType": "text", "content": "from outside"}
    replies = graph("GET", f"{messages_path()}/{posted['id']}/replies", alice_token).json()
    assert [r["id"] for r in replies["value"]] == [reply["id"]]


def test_control_message_errors(control: Control, emulator: Any, http: Any) -> None:
    url = f"{emulator.authority_host}/_emulator{CONTROL_MESSAGES}"
    headers = {"Content-Type": "application/json"}
    assert http.post(url, json={}, headers=headers).status_code == 400
    assert (
        http.post(url, json={"content": "x", "reply_to": "1"}, headers=headers).status_code == 404
    )
    other = url.replace(SECOPS, "00000000-0000-0000-0000-000000000000")
    assert http.post(other, json={"content": "x"}, headers=headers).status_code == 404
    # Same cross-site guard as the rest of the control API.
    assert http.post(url, content=b'{"content": "x"}').status_code == 415


def test_failed_deliveries_are_retried_then_given_up(
    graph: Graph, control: Control, receiver: Receiver, alice_token: str
) -> None:
    subscribe(graph, control, receiver, alice_token)
    receiver.statuses = [500, 503]
    control("POST", CONTROL_MESSAGES, json={"content": "one"})
    receiver.wait_for(lambda seen: len(seen) == 3)
    # The receiver records a request before it answers: wait for the emulator to see it too.
    stats = _stats_when(control, lambda change: change["delivered"] == 1)
    assert stats["by_outcome"] == {"500": 1, "503": 1, "202": 1}
    assert (stats["sent"], stats["retries"], stats["delivered"], stats["failed"]) == (3, 2, 1, 0)

    receiver.default_status = 500
    control("POST", CONTROL_MESSAGES, json={"content": "two"})
    receiver.wait_for(lambda seen: len(seen) == 6)
    _stats_when(control, lambda change: change["failed"] == 1)
    (listed,) = control("GET", "/subscriptions").json()["subscriptions"]
    assert listed["delivery"]["failed"] == 1 and listed["delivery"]["attempts"] == 6


def test_a_slow_endpoint_times_out_and_is_counted(
    graph: Graph, control: Control, receiver: Receiver, alice_token: str
) -> None:
    subscribe(graph, control, receiver, alice_token)
    control(
        "PATCH", "/config", json={"notifications": {"timeout_seconds": 0.2, "retry_delays": []}}
    )
    receiver.delay_seconds = 0.5
    control("POST", CONTROL_MESSAGES, json={"content": "slow"})
    change = _stats_when(control, lambda change: change["failed"] == 1)
    assert change["by_outcome"] == {"timeout": 1}


def test_delivery_never_holds_up_the_post(
    graph: Graph, control: Control, receiver: Receiver, alice_token: str
) -> None:
    subscribe(graph, control, receiver, alice_token)
    receiver.answering.clear()  # the receiver takes the notification but does not answer
    control("POST", CONTROL_MESSAGES, json={"content": "held"})
    # Had the post waited for the delivery, the delivery would have an outcome by now.
    assert notifications_stats(control)["change"]["by_outcome"] == {}
    receiver.wait_for(lambda seen: len(seen) == 1)
    receiver.answering.set()
    _stats_when(control, lambda change: change["delivered"] == 1)


def test_duplicate_knob_sends_each_notification_twice(
    graph: Graph, control: Control, receiver: Receiver, alice_token: str
) -> None:
    subscribe(graph, control, receiver, alice_token)
    control("PATCH", "/config", json={"notifications": {"duplicate": True}})
    control("POST", CONTROL_MESSAGES, json={"content": "twice"})
    receiver.wait_for(lambda seen: len(seen) == 2)
    first, second = receiver.received()
    assert first.json() == second.json()


def test_expired_and_deleted_subscriptions_are_not_notified(
    graph: Graph, control: Control, receiver: Receiver, alice_token: str
) -> None:
    subscribe(
        graph,
        control,
        receiver,
        alice_token,
        notificationUrl=f"{receiver.url}/short",
        expirationDateTime=iso_in(control, 600),
    )
    deleted = subscribe(
        graph, control, receiver, alice_token, notificationUrl=f"{receiver.url}/gone"
    )
    assert graph("DELETE", f"/subscriptions/{deleted['id']}", alice_token).status_code == 204
    subscribe(graph, control, receiver, alice_token)
    control("POST", "/clock", json={"advance_seconds": 601})
    control("POST", CONTROL_MESSAGES, json={"content": "after expiry"})
    receiver.wait_for(lambda seen: len(seen) >= 1)
    assert [n.path for n in receiver.received()] == ["/notify"]


def test_lifecycle_events(
    graph: Graph, control: Control, receiver: Receiver, alice_token: str
) -> None:
    subscription = subscribe(graph, control, receiver, alice_token)
    path = f"/subscriptions/{subscription['id']}/lifecycle"
    control("POST", path, json={"event": "reauthorizationRequired"})
    receiver.wait_for(lambda seen: len(seen) == 1)
    assert receiver.received("/lifecycle")[0].json() == {
        "value": [
            {
                "subscriptionId": subscription["id"],
                "subscriptionExpirationDateTime": subscription["expirationDateTime"],
                "tenantId": TENANT_ID,
                "clientState": "secret-state",
                "lifecycleEvent": "reauthorizationRequired",
            }
        ]
    }
    (listed,) = control("GET", "/subscriptions").json()["subscriptions"]
    assert listed["needsReauthorization"] is True
    reauthorize = f"/subscriptions/{subscription['id']}/reauthorize"
    assert graph("POST", reauthorize, alice_token).status_code == 204
    (listed,) = control("GET", "/subscriptions").json()["subscriptions"]
    assert listed["needsReauthorization"] is False

    control("POST", path, json={"event": "missed"})
    control("POST", path, json={"event": "subscriptionRemoved"})
    receiver.wait_for(lambda seen: len(seen) == 3)
    events = sorted(n.json()["value"][0]["lifecycleEvent"] for n in receiver.received())
    assert events == ["missed", "reauthorizationRequired", "subscriptionRemoved"]
    assert graph("GET", f"/subscriptions/{subscription['id']}", alice_token).status_code == 404
    lifecycle = _stats_when(control, lambda stats: stats["delivered"] >= 3, kind="lifecycle")
    assert lifecycle["delivered"] == 3


def test_a_reset_cancels_pending_retries(
    graph: Graph, control: Control, receiver: Receiver, alice_token: str
) -> None:
    subscribe(graph, control, receiver, alice_token)
    control("PATCH", "/config", json={"notifications": {"retry_delays": [30]}})
    receiver.default_status = 500
    control("POST", CONTROL_MESSAGES, json={"content": "fails"})
    receiver.wait_for(lambda seen: len(seen) == 1)

    def pending() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("emulator-notify-")]

    assert pending()  # waiting 30 s for its retry
    control("POST", "/reset")
    # The emulator runs in this process, so its delivery threads are visible here: the
    # reset wakes the one waiting and it ends at once instead of retrying in 30 s.
    deadline = time.monotonic() + 5
    while pending():
        assert time.monotonic() < deadline, "the pending retry survived the reset"
        time.sleep(0.02)
    assert len(receiver.received()) == 1
