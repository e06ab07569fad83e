"""Secrets at rest and in logs: nothing a database dump or a log file reader could reuse."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.conftest import Api
from tests.utils.dump import raw_dump
from tests.utils.flows import connect, sign_in, start_connect
from tracecat.auth.integrations.service import IntegrationService
from tracecat.logs import quiet_libraries


def _stored_tokens(api: Api, user_id: str) -> tuple[str, str]:
    async def read() -> tuple[str, str]:
        async with IntegrationService.with_session(api.settings) as service:
            integration = await service.get_user_integration(user_id=user_id)
            assert integration is not None
            return integration.access_token, integration.refresh_token

    return asyncio.run(read())


def test_database_holds_no_token_or_key(api: Api) -> None:
    user = api.user("analyst@example.com")
    with api.browser() as browser:
        # A pending flow too: its PKCE verifier is a secret until the callback.
        pending_auth_url = start_connect(browser, api.url, user)
        connect(browser, api.url, user, "alice@contoso.example")
    access_token, refresh_token = _stored_tokens(api, user.id)
    assert access_token and refresh_token
    dump = raw_dump(api.database_url)
    assert b"alice@contoso.example" in dump  # the dump is real: it sees the account metadata
    for secret in (access_token, refresh_token, user.api_key, api.settings.microsoft_client_secret):
        assert secret.encode() not in dump
    assert pending_auth_url


def test_no_secret_in_logs(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    quiet_libraries()  # as `serve` sets logging up, even at TRACECAT_LOG_LEVEL=DEBUG
    caplog.set_level(logging.DEBUG)
    user = api.user("analyst@example.com")
    with api.browser() as browser:
        callback_url = sign_in(start_connect(browser, api.url, user), "alice@contoso.example")
        assert browser.get(callback_url).status_code == 200
        first_tokens = _stored_tokens(api, user.id)
        browser.get("/auth/integrations/microsoft/status", headers=user.headers)
        browser.get(callback_url)  # a replay, to log a refusal too
        # Graph rejects the token, so it is refreshed and the call retried: all of it logged.
        api.control("POST", "/users/alice@contoso.example/expire-tokens")
        assert (
            browser.get("/auth/integrations/microsoft/teams", headers=user.headers).status_code
            == 200
        )
    access_token, refresh_token = _stored_tokens(api, user.id)
    assert access_token != first_tokens[0]
    code = callback_url.split("code=", 1)[1].split("&", 1)[0]
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "GET /auth/integrations/microsoft/callback" in text  # access lines were captured
    for secret in (
        access_token,
        refresh_token,
        user.api_key,
        api.settings.microsoft_client_secret,
        code,
    ):
        assert secret not in text
