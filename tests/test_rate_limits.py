"""Rate limits over real HTTP (both databases): per API key, per client address for failed
authentication (then everything from it is refused, valid keys included, until the window
passes), the client address behind trusted proxies only, and one budget shared in Redis."""

from __future__ import annotations

import uuid

import httpx
import pytest
import redis
from starlette.requests import Request

from tests.audit.support import stored_events
from tests.conftest import Api
from tracecat.clients import client_address
from tracecat.config import Settings

STATUS = "/auth/integrations/microsoft/status"
REDIS_URL = "redis://127.0.0.1:6379/0"


def get(url: str, key: str | None = None, **headers: str) -> httpx.Response:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.get(f"{url}{STATUS}", headers=headers)


def assert_limited(answer: httpx.Response, window: int = 60) -> None:
    assert answer.status_code == 429, answer.text
    assert 1 <= int(answer.headers["retry-after"]) <= window
    assert "rate limit" in answer.json()["detail"]


def test_each_api_key_has_its_own_budget(api: Api) -> None:
    first, second = api.user("first@example.com"), api.user("second@example.com")
    with api.another_server(tracecat_rate_limit="5/minute") as url:
        assert [get(url, first.api_key).status_code for _ in range(5)] == [200] * 5
        assert_limited(get(url, first.api_key))
        assert_limited(get(url, first.api_key))
        assert get(url, second.api_key).status_code == 200
        # The web UI spends the same key's budget: signing in works, its pages do not.
        with httpx.Client(base_url=url, headers={"Accept": "text/html"}) as browser:
            assert browser.post("/sign-in", data={"api_key": first.api_key}).status_code == 303
            page = browser.get("/connection")
            assert page.status_code == 429 and "text/html" in page.headers["content-type"]
    # Recorded once per key and window, not per 429.
    (hit,) = [e for e in stored_events(api.database_url) if e.event == "rate_limit.exceeded"]
    assert str(hit.user_id) == first.id and hit.client_address == "127.0.0.1"
    assert hit.detail == "limit 5/minute"


def test_an_address_that_fails_too_often_is_refused_even_with_a_valid_key(api: Api) -> None:
    user = api.user("analyst@example.com")
    with api.another_server(tracecat_auth_failure_limit="3/minute") as url:
        for _ in range(10):  # a missing key is not a guess: it does not count
            assert get(url).status_code == 401
        assert get(url, user.api_key).status_code == 200
        assert [get(url, "tci_guess").status_code for _ in range(3)] == [401] * 3
        assert_limited(get(url, "tci_guess"))
        assert_limited(get(url, user.api_key))  # only this stops guessing
        (hit,) = [e for e in stored_events(api.database_url) if e.event == "rate_limit.exceeded"]
        assert hit.user_id is None and hit.client_address == "127.0.0.1"
        sign_in = httpx.post(f"{url}/sign-in", data={"api_key": user.api_key})
        assert sign_in.status_code == 429


def test_wrong_keys_at_the_sign_in_page_count_too(api: Api) -> None:
    user = api.user("analyst@example.com")
    with api.another_server(tracecat_auth_failure_limit="2/minute") as url:
        for _ in range(2):
            assert httpx.post(f"{url}/sign-in", data={"api_key": "tci_guess"}).status_code == 401
        assert_limited(get(url, user.api_key))


def test_the_refusal_ends_when_the_window_passes(api: Api) -> None:
    """In Redis a window is its counter's time to live: the window passing is the key
    expiring, which the test does at once instead of waiting a minute."""
    user = api.user("analyst@example.com")
    # An address of this test alone: the Redis counters outlive the app.
    guesser = {"X-Forwarded-For": f"198.51.100.{uuid.uuid4().int % 250 + 1}"}
    shared = {
        "tracecat_auth_failure_limit": "2/minute",
        "tracecat_trusted_proxies": "127.0.0.0/8",
        "redis_url": REDIS_URL,
    }
    with api.another_server(**shared) as url:
        for _ in range(3):
            get(url, "tci_guess", **guesser)
        assert_limited(get(url, user.api_key, **guesser))
        client = redis.Redis.from_url(REDIS_URL)
        try:
            counters = list(client.scan_iter(f"*{guesser['X-Forwarded-For']}*"))
            assert counters  # the window lives in Redis, as a key with a time to live
            assert all(0 < client.ttl(key) <= 60 for key in counters)
            client.delete(*counters)  # the window ends
        finally:
            client.close()
        assert get(url, user.api_key, **guesser).status_code == 200


def test_forwarded_for_counts_only_behind_a_trusted_proxy(api: Api) -> None:
    user = api.user("analyst@example.com")
    guesser, someone_else = {"X-Forwarded-For": "203.0.113.7"}, {"X-Forwarded-For": "203.0.113.8"}
    with api.another_server(
        tracecat_auth_failure_limit="2/minute", tracecat_trusted_proxies="127.0.0.0/8"
    ) as url:
        for _ in range(2):
            assert get(url, "tci_guess", **guesser).status_code == 401
        assert_limited(get(url, user.api_key, **guesser))
        assert get(url, user.api_key, **someone_else).status_code == 200
    with api.another_server(tracecat_auth_failure_limit="2/minute") as url:
        # Not behind a trusted proxy: the header is the caller's word, and ignored.
        assert get(url, "tci_guess", **guesser).status_code == 401
        assert get(url, "tci_guess", **someone_else).status_code == 401
        assert_limited(get(url, user.api_key, **{"X-Forwarded-For": "198.51.100.1"}))


def test_instances_share_one_budget_in_redis(api: Api) -> None:
    user = api.user("analyst@example.com")
    shared = {"tracecat_rate_limit": "4/minute", "redis_url": REDIS_URL}
    with api.another_server(**shared) as first, api.another_server(**shared) as second:
        answers = [get(url, user.api_key).status_code for url in (first, second) * 2]
        assert answers == [200] * 4
        assert_limited(get(first, user.api_key))
        assert_limited(get(second, user.api_key))


def request_from(peer: str, *forwarded: str) -> Request:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return Request({"type": "http", "client": (peer, 5000), "headers": headers})


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),  # not a proxy of ours: its own word
        ("10.0.0.2", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.2", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # the client's own claim
        ("10.0.0.2", ["198.51.100.1, 10.0.0.3"], "198.51.100.1"),  # two proxies of ours
        ("10.0.0.2", ["198.51.100.1", "10.0.0.3"], "198.51.100.1"),  # header repeated
        ("10.0.0.2", ["not-an-ip, 10.0.0.3"], "10.0.0.2"),
        ("10.0.0.2", [], "10.0.0.2"),
        ("10.0.0.2", ["10.0.0.4"], "10.0.0.4"),  # every hop ours: the first one
    ],
)
def test_client_address(peer: str, forwarded: list[str], expected: str) -> None:
    trusted = Settings(tracecat_trusted_proxies="10.0.0.0/8").tracecat_trusted_proxies
    assert client_address(request_from(peer, *forwarded), trusted) == expected


@pytest.mark.parametrize("value", ["lots", "10/fortnight", "", "-1/minute"])
def test_a_malformed_limit_is_a_one_line_settings_error(value: str) -> None:
    with pytest.raises(ValueError, match="amount per period"):
        Settings(tracecat_rate_limit=value)
