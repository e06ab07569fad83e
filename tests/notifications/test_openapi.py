"""The OpenAPI schema of the live app describes change notifications as they behave: the
subscription routes and their JSON (the secret only in the create's answer), Microsoft's
inbound routes with the handshake's text/plain answer, and what we POST to a target."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import Api

SUBS = "/auth/integrations/microsoft/subscriptions"


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The schema behind a `$ref` (or an array's items' `$ref`)."""
    schema = schema.get("items", schema)
    name = schema["$ref"].rsplit("/", 1)[1]
    found: dict[str, Any] = spec["components"]["schemas"][name]
    return found


def _answer(spec: dict[str, Any], path: str, method: str, status: str) -> dict[str, Any]:
    content = spec["paths"][path][method]["responses"][status]["content"]
    return _resolve(spec, content["application/json"]["schema"])


def test_the_schema_describes_subscriptions_inbound_routes_and_webhooks(api: Api) -> None:
    spec = httpx.get(f"{api.url}/openapi.json").json()
    paths = spec["paths"]
    assert set(paths[SUBS]) == {"get", "post"}
    assert set(paths[f"{SUBS}/{{subscription_id}}"]) == {"get", "delete"}
    assert "post" in paths[f"{SUBS}/{{subscription_id}}/rotate-secret"]
    assert "get" in paths[f"{SUBS}/{{subscription_id}}/deliveries"]
    assert "post" in paths[f"{SUBS}/{{subscription_id}}/deliveries/{{delivery_id}}/retry"]

    created = _answer(spec, SUBS, "post", "201")["properties"]
    listed = _answer(spec, SUBS, "get", "200")["properties"]
    assert set(created) == set(listed) | {"secret"}
    assert "secret" not in listed
    assert _resolve(
        spec, paths[SUBS]["post"]["requestBody"]["content"]["application/json"]["schema"]
    )["required"] == ["team_id", "channel_id", "target_url"]
    delivery = _answer(spec, f"{SUBS}/{{subscription_id}}/deliveries", "get", "200")
    assert set(delivery["properties"]) >= {"id", "status", "attempts", "next_attempt_at"}

    for route in ("/webhooks/microsoft/notifications", "/webhooks/microsoft/lifecycle"):
        post = paths[route]["post"]
        assert [p["name"] for p in post["parameters"]] == ["validationToken"]
        assert "text/plain" in post["responses"]["200"]["content"]
        assert {"202", "400"} <= set(post["responses"])

    webhook = spec["webhooks"]["message.created"]["post"]
    headers = {p["name"] for p in webhook["parameters"] if p["in"] == "header"}
    assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    event = _resolve(spec, webhook["requestBody"]["content"]["application/json"]["schema"])
    assert set(event["properties"]) == {"type", "timestamp", "data"}
    assert set(_resolve(spec, event["properties"]["data"])["properties"]) == {
        "subscription_id",
        "team_id",
        "channel_id",
        "message",
    }
