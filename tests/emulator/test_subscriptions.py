"""Graph's /subscriptions for channel messages: creation rules, handshake, read, renew, delete."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from emulator_support import ALICE, BOB, GRAPH, SECOPS
from subscription_support import (
    FAST,
    RESOURCE,
    Control,
    Graph,
    iso_in,
    subscribe,
    subscription_body,
)
from test_graph import assert_graph_error

from tests.utils.webhook import Receiver
from tracecat.emulator.constants import DEMO_CLIENT_ID
from tracecat.emulator.demo_data import team_id_for

pytestmark = pytest.mark.filterwarnings("ignore:response_mode:UserWarning")


@pytest.fixture(autouse=True)
def fast(control: Control) -> None:
    control("PATCH", "/config", json=FAST)


def test_create_validates_both_endpoints_and_answers_the_resource(
    graph: Graph, control: Control, receiver: Receiver, alice_token: str
) -> None:
    created = subscribe(graph, control, receiver, alice_token)
    assert created["@odata.context"].endswith("/v1.0/$metadata#subscriptions/$entity")
    assert created["resource"] == RESOURCE
    assert created["applicationId"] == DEMO_CLIENT_ID
    assert created["changeType"] == "created"
    assert created["clientState"] == "secret-state"
    assert created["notificationUrl"] == f"{receiver.url}/notify"
    assert created["lifecycleNotificationUrl"] == f"{receiver.url}/lifecycle"
    assert created["latestSupportedTlsVersion"] == "v1_2"
    assert created["creatorId"] == graph("GET", "/me", alice_token).json()["id"]
    assert created["expirationDateTime"].endswith("Z")
    assert {"includeResourceData", "notificationUrlAppId", "encryptionCertificate"} <= set(created)

    # One handshake per endpoint: an empty text/plain POST with a Graph-like token.
    assert [v.path for v in receiver.validations] == ["/notify", "/lifecycle"]
    for validation in receiver.validations:
        assert validation.body == b""
        assert validation.content_type.startswith("text/plain")
        assert validation.query["validationToken"].startswith("Validation: Testing client")

    fetched = graph("GET", f"/subscriptions/{created['id']}", alice_token)
    assert fetched.status_code == 200 and fetched.json() == created
    listed = graph("GET", "/subscriptions", alice_token).json()
    assert [s["id"] for s in listed["value"]] == [created["id"]]
    stats = control("GET", "/stats").json()["notifications"]
    assert stats["validations"] == {"ok": 2, "failed": 0}


@pytest.mark.parametrize("mode", ["wrong", "json", "500"])
def test_a_failed_handshake_is_a_validation_error_and_creates_nothing(
    graph: Graph, control: Control, receiver: Receiver, alice_token: str, mode: str
) -> None:
    receiver.validation = mode
    answer = graph("POST", "/subscriptions", alice_token, json=subscription_body(control, receiver))
    error = assert_graph_error(answer, 400, "ValidationError")
    assert error["message"].startswith("Subscription validation request failed.")
    assert graph("GET", "/subscriptions", alice_token).json()["value"] == []


def test_a_slow_handshake_times_out(
    graph: Graph, control: Control, receiver: Receiver, alice_token: str
) -> None:
    control("PATCH", "/config", json={"notifications": {"timeout_seconds": 0.2}})
    receiver.delay_seconds = 0.5
    answer = graph("POST", "/subscriptions", alice_token, json=subscription_body(control, receiver))
    error = assert_graph_error(answer, 400, "ValidationError")
    assert error["message"] == "Subscription validation request timed out."


def test_an_unreachable_endpoint_fails_validation(
    graph: Graph, control: Control, receiver: Receiver, alice_token: str
) -> None:
    body = subscription_body(control, receiver, notificationUrl="http://127.0.0.1:9/hook")
    answer = graph("POST", "/subscriptions", alice_token, json=body)
    assert_graph_error(answer, 400, "ValidationError")


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"lifecycleNotificationUrl": None}, "lifecycleNotificationUrl is a required property"),
        ({"clientState": "x" * 129}, "at most 128"),
        ({"includeResourceData": True}, "includeResourceData"),
        ({"changeType": "created,bogus"}, "changeType"),
        ({"notificationUrl": "ftp://example.com/x"}, "absolute URL"),
        ({"resource": "/me/messages"}, "not supported"),
        ({"expirationDateTime": "tomorrow"}, "ISO 8601"),
        ({"latestSupportedTlsVersion": "v9"}, "latestSupportedTlsVersion"),
    ],
)
def test_body_rules(
    graph: Graph,
    control: Control,
    receiver: Receiver,
    alice_token: str,
    overrides: dict[str, Any],
    fragment: str,
) -> None:
    body = subscription_body(control, receiver, **overrides)
    error = assert_graph_error(
        graph("POST", "/subscriptions", alice_token, json=body), 400, "ValidationError"
    )
    assert fragment in error["message"]
    assert receiver.validations == []  # rules are checked before any outbound call


def test_expiration_limits(
    graph: Graph, control: Control, receiver: Receiver, alice_token: str
) -> None:
    too_far = subscription_body(control, receiver, expirationDateTime=iso_in(control, 4321 * 60))
    error = assert_graph_error(
        graph("POST", "/subscriptions", alice_token, json=too_far), 400, "ValidationError"
    )
    assert "4320 minutes" in error["message"]
    past = subscription_body(control, receiver, expirationDateTime=iso_in(control, -60))
    assert_graph_error(
        graph("POST", "/subscriptions", alice_token, json=past), 400, "ValidationError"
    )
    # Up to an hour needs no lifecycle endpoint; the key syntax for the resource works too.
    short = subscription_body(
        control,
        receiver,
        lifecycleNotificationUrl=None,
        expirationDateTime=iso_in(control, 3000),
        resource=f"teams('{SECOPS}')/channels('{quote(RESOURCE.split('/')[4], safe='')}')/messages",
    )
    assert graph("POST", "/subscriptions", alice_token, json=short).status_code == 201


def test_permissions_membership_and_auth(
    graph: Graph,
    control: Control,
    receiver: Receiver,
    sign_in: Callable[..., dict[str, Any]],
) -> None:
    body = subscription_body(control, receiver)
    unauthenticated = graph("POST", "/subscriptions", "not-a-token", json=body)
    assert_graph_error(unauthenticated, 401, "InvalidAuthenticationToken")
    no_read = sign_in(ALICE, [f"{GRAPH}/User.Read", f"{GRAPH}/ChannelMessage.Send"])
    missing = graph("POST", "/subscriptions", no_read["access_token"], json=body)
    error = assert_graph_error(missing, 403, "Forbidden")
    assert "ChannelMessage.Read.All" in error["message"]
    token = sign_in(ALICE)["access_token"]
    private = subscription_body(
        control,
        receiver,
        resource=f"/teams/{team_id_for('Executive Leadership')}/channels/x/messages",
    )
    assert_graph_error(graph("POST", "/subscriptions", token, json=private), 403, "Forbidden")
    unknown_channel = subscription_body(
        control, receiver, resource=f"/teams/{SECOPS}/channels/19:nope@thread.tacv2/messages"
    )
    assert_graph_error(
        graph("POST", "/subscriptions", token, json=unknown_channel), 404, "NotFound"
    )


def test_renew_delete_reauthorize_and_unknown_ids(
    graph: Graph,
    control: Control,
    receiver: Receiver,
    alice_token: str,
    sign_in: Callable[..., dict[str, Any]],
) -> None:
    created = subscribe(graph, control, receiver, alice_token)
    path = f"/subscriptions/{created['id']}"
    later = iso_in(control, 4000 * 60)
    renewed = graph("PATCH", path, alice_token, json={"expirationDateTime": later})
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["expirationDateTime"][:19] == later[:19]
    too_far = graph(
        "PATCH", path, alice_token, json={"expirationDateTime": iso_in(control, 5000 * 60)}
    )
    assert_graph_error(too_far, 400, "ValidationError")
    other_field = graph("PATCH", path, alice_token, json={"clientState": "new"})
    assert_graph_error(other_field, 400, "ValidationError")
    assert graph("POST", f"{path}/reauthorize", alice_token).status_code == 204

    # Bob's list is his own; another user of the same app does not see Alice's.
    bob = sign_in(BOB)["access_token"]
    assert graph("GET", "/subscriptions", bob).json()["value"] == []

    assert graph("DELETE", path, alice_token).status_code == 204
    for method in ("GET", "DELETE", "PATCH"):
        gone = graph(method, path, alice_token, json={"expirationDateTime": later})
        assert_graph_error(gone, 404, "ResourceNotFound")
    assert_graph_error(graph("POST", f"{path}/reauthorize", alice_token), 404, "ResourceNotFound")


def test_an_expired_subscription_is_gone(
    graph: Graph, control: Control, receiver: Receiver, alice_token: str
) -> None:
    created = subscribe(
        graph, control, receiver, alice_token, expirationDateTime=iso_in(control, 600)
    )
    control("POST", "/clock", json={"advance_seconds": 601})
    gone = graph("GET", f"/subscriptions/{created['id']}", alice_token)  # token still valid
    assert_graph_error(gone, 404, "ResourceNotFound")
    assert graph("GET", "/subscriptions", alice_token).json()["value"] == []
    assert control("GET", "/subscriptions").json()["subscriptions"] == []
