"""The notification settings: defaults, shapes, and one-line errors naming the variable."""

from __future__ import annotations

import ipaddress

import pytest

from tracecat.config import Settings, get_settings
from tracecat.exceptions import SettingsError


def test_defaults() -> None:
    settings = Settings()
    assert settings.tracecat_public_url is None
    assert settings.tracecat_webhook_allowed_networks == []
    assert settings.tracecat_webhook_retry_seconds == [
        5,
        30,
        120,
        600,
        1800,
        3600,
        7200,
        14400,
        28800,
        43200,
    ]
    assert settings.tracecat_subscription_lifetime_seconds == 252000
    assert settings.tracecat_resync_interval_seconds == 300


def test_values_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACECAT_PUBLIC_URL", "https://tracecat.example.com/")
    monkeypatch.setenv("TRACECAT_WEBHOOK_ALLOWED_NETWORKS", "10.0.0.0/8, fd00::/8 127.0.0.1")
    monkeypatch.setenv("TRACECAT_WEBHOOK_RETRY_SECONDS", "1,2.5 10")
    settings = Settings()
    assert settings.tracecat_public_url == "https://tracecat.example.com"
    assert settings.tracecat_webhook_allowed_networks == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
        ipaddress.ip_network("127.0.0.1/32"),
    ]
    assert settings.tracecat_webhook_retry_seconds == [1, 2.5, 10]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TRACECAT_PUBLIC_URL", "tracecat.example.com"),
        ("TRACECAT_WEBHOOK_ALLOWED_NETWORKS", "10.0.0.0/8,intranet"),
        ("TRACECAT_WEBHOOK_RETRY_SECONDS", "5,soon"),
        ("TRACECAT_WEBHOOK_RETRY_SECONDS", "5,0"),
        ("TRACECAT_SUBSCRIPTION_LIFETIME_SECONDS", "999999"),
        ("TRACECAT_RESYNC_INTERVAL_SECONDS", "-1"),
    ],
)
def test_malformed_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError) as error:
            get_settings()
    finally:
        get_settings.cache_clear()
    message = str(error.value)
    assert message.startswith(f"{name}: ") and "\n" not in message
