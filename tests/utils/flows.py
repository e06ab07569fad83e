"""Small helpers that act as a user would: create a user, connect through the browser flow."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

import httpx

from tracecat.auth.service import UserService
from tracecat.db import Database


@dataclass
class ApiUser:
    id: str
    email: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def create_user(database_url: str, email: str) -> ApiUser:
    async def create() -> ApiUser:
        database = Database(database_url)
        try:
            async with database.session() as session:
                issued = await UserService(session).create_user(email)
                return ApiUser(**issued.as_json())
        finally:
            await database.dispose()

    return ApiUser(**asyncio.run(create()).__dict__)


def start_connect(browser: httpx.Client, base_url: str, user: ApiUser) -> str:
    response = browser.get(f"{base_url}/auth/integrations/microsoft/connect", headers=user.headers)
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"auth_url"}
    return response.json()["auth_url"]


def sign_in(auth_url: str, email: str) -> str:
    """What Microsoft's sign-in page does: answers with a redirect to our callback."""
    url = httpx.URL(auth_url)
    response = httpx.get(url.copy_merge_params({"login_hint": email}), follow_redirects=False)
    assert response.status_code in (302, 303), response.text
    return response.headers["location"]


def connect(browser: httpx.Client, base_url: str, user: ApiUser, ms_email: str) -> httpx.Response:
    callback_url = sign_in(start_connect(browser, base_url, user), ms_email)
    return browser.get(callback_url)


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
