"""Settings: URLs checked for shape when loaded, and never shown with their secrets.

In-process and fast; tests/test_cli.py runs the same forms through the real command line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from tracecat.config import Settings, SettingsError, get_settings
from tracecat.db import Database, upgrade_schema
from tracecat.urls import redact_url, url_error_reason

# Two halves, so a password split at an unencoded '@' or '/' is caught half-shown too.
HEAD, TAIL = "Hq7zK", "Wm3xP"
SECRET = f"{HEAD}{TAIL}"

# (URL, the parts of it no person may see, refused when loaded rather than when connecting)
DATABASE_URLS = [
    (f"postgresql://u:{SECRET}@127.0.0.1:1/db", [SECRET], False),
    (f"postgresql+asyncpg://u:{SECRET}@127.0.0.1:1/db", [SECRET], False),
    (f"postgres://u:{SECRET}@[::1]:1/db", [SECRET], False),
    (f"postgresql://u@127.0.0.1:1/db?password={SECRET}", [SECRET], False),
    (f"postgresql://u@127.0.0.1:1/db?sslmode=require&password={SECRET}", [SECRET], False),
    (f"postgresql://u:{HEAD}@{TAIL}@127.0.0.1:1/db", [HEAD, TAIL], True),
    (f"postgresql://u:{HEAD}/{TAIL}@127.0.0.1:1/db", [HEAD, TAIL], True),
    (f"postgresql://u:{HEAD}?{TAIL}@127.0.0.1:1/db", [HEAD, TAIL], True),
    (f"postgresql://u:{HEAD}#{TAIL}@127.0.0.1:1/db", [HEAD, TAIL], True),
    (f"postgresql://127.0.0.1:1/db?password={HEAD}@{TAIL}", [HEAD, TAIL], True),
    (f"postgresql://u:{SECRET}/db", [SECRET], True),  # the host forgotten
    (f"postgresql://u:{SECRET}@127.0.0.1:port/db", [SECRET], True),
    (f"postgresql://u:{SECRET}@127.0.0.1:99999/db", [SECRET], True),
    (f"mysql://u:{SECRET}@127.0.0.1/db", [SECRET], True),
    (f"sqlite://:{SECRET}@/tracecat.db", [SECRET], True),
    (SECRET, [SECRET], True),
    (f"postgresql:/u:{SECRET}@127.0.0.1/db", [SECRET], True),
    (f"u:{SECRET}@127.0.0.1/db", [SECRET], True),
]
REDIS_URLS = [
    (f"redis://:{SECRET}@127.0.0.1:1/0", [SECRET], False),
    (f"rediss://user:{SECRET}@127.0.0.1:1/0", [SECRET], False),
    (f"redis://127.0.0.1:1/0?password={SECRET}", [SECRET], False),
    (f"unix://:{SECRET}@/run/redis.sock?db=0", [SECRET], False),
    (f"redis://:{HEAD}/{TAIL}@127.0.0.1:1/0", [HEAD, TAIL], True),
    (f"redis://:{HEAD}@{TAIL}@127.0.0.1:1/0", [HEAD, TAIL], True),
    (f"http://:{SECRET}@127.0.0.1:1", [SECRET], True),
    (SECRET, [SECRET], True),
]
ALL_URLS = [("DATABASE_URL", *case) for case in DATABASE_URLS] + [
    ("REDIS_URL", *case) for case in REDIS_URLS
]


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in ("DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def assert_hidden(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, text


@pytest.mark.parametrize(("variable", "url", "secrets", "at_load"), ALL_URLS)
def test_redact_url_shows_no_piece_of_a_secret(
    variable: str, url: str, secrets: list[str], at_load: bool
) -> None:
    assert_hidden(redact_url(url), secrets)


def test_redact_url_keeps_what_helps() -> None:
    shown = redact_url(f"postgresql+asyncpg://app:{SECRET}@db.internal:5432/tracecat?ssl=on")
    assert shown == "postgresql+asyncpg://app:***@db.internal:5432/tracecat?ssl=***"
    assert redact_url("sqlite:////var/lib/a@b/tracecat.db") == "sqlite:////var/lib/a@b/tracecat.db"
    assert redact_url(f"redis://:{SECRET}@cache:6379/0") == "redis://:***@cache:6379/0"


def test_good_urls_load_unchanged(environment: pytest.MonkeyPatch) -> None:
    good = {
        "DATABASE_URL": "postgresql://u:p%40ss%2F@127.0.0.1:5432/db?ssl=require",
        "REDIS_URL": "rediss://default:p%40ss@cache.example:6380/1",
    }
    for name, url in good.items():
        environment.setenv(name, url)
    settings = get_settings()
    assert settings.database_url == good["DATABASE_URL"]
    assert settings.redis_url == good["REDIS_URL"]
    for url in ("sqlite:///relative.db", "sqlite:////abs/a@b.db", "sqlite://", "postgres:///db"):
        assert Settings(database_url=url).database_url == url
    assert Settings(database_url="  ").database_url is None  # blank: the default


@pytest.mark.parametrize(("variable", "url", "secrets", "at_load"), ALL_URLS)
def test_malformed_urls_are_refused_at_load_in_one_line(
    environment: pytest.MonkeyPatch, variable: str, url: str, secrets: list[str], at_load: bool
) -> None:
    environment.setenv(variable, url)
    if not at_load:
        assert_hidden(repr(get_settings()), secrets)
        return
    with pytest.raises(SettingsError) as raised:
        get_settings()
    message = str(raised.value)
    assert message.startswith(f"{variable}: ") and "\n" not in message
    assert "Value error" not in message
    assert_hidden(message, secrets)


def test_unknown_scheme_names_the_accepted_forms(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("DATABASE_URL", f"mysql://u:{SECRET}@h/db")
    with pytest.raises(SettingsError) as raised:
        get_settings()
    assert str(raised.value) == (
        "DATABASE_URL: unsupported scheme 'mysql://': "
        "use sqlite:///path or postgresql://user:password@host:port/db"
    )
    environment.setenv("DATABASE_URL", SECRET)
    with pytest.raises(SettingsError, match="DATABASE_URL: cannot parse it .*sqlite:///path"):
        get_settings.cache_clear()
        get_settings()


def test_validation_error_and_repr_hide_secrets() -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(database_url=f"postgresql://u:{HEAD}@{TAIL}@h/db")
    assert_hidden(str(raised.value), [HEAD, TAIL])
    settings = Settings(
        database_url=f"postgresql://u:{SECRET}@h/db",
        redis_url=f"redis://h:6379/0?password={SECRET}",
        microsoft_client_secret=SECRET,
        tracecat_encryption_keys=[SECRET],
    )
    assert_hidden(repr(settings), [SECRET])
    assert_hidden(str(settings), [SECRET])


def test_driver_messages_lose_the_secrets_and_extra_lines() -> None:
    url = f"postgresql://u:{SECRET}@h/db?password=p%40{TAIL}"
    said = OSError(f"cannot connect to {url} with {SECRET} or p@{TAIL}\nDETAIL: more")
    reason = url_error_reason(said, url)
    assert "\n" not in reason and "DETAIL" not in reason
    assert_hidden(reason, [SECRET, TAIL])
    assert "postgresql://u:***@h/db?password=***" in reason


@pytest.mark.parametrize(("url", "secrets", "at_load"), DATABASE_URLS)
def test_engines_refuse_or_fail_without_showing_secrets(
    url: str, secrets: list[str], at_load: bool
) -> None:
    """`Database(url)` and `upgrade_schema(url)` check the URL themselves (not every caller
    loads it through Settings), and report a failed connection in one redacted line."""

    async def open_and_close() -> None:
        await Database(url).dispose()

    with pytest.raises(SettingsError) as raised:
        if at_load:
            asyncio.run(open_and_close())
        else:
            upgrade_schema(url)  # a closed port
    message = str(raised.value)
    assert message.startswith("DATABASE_URL: ") and "\n" not in message
    assert_hidden(message, secrets)
