"""Settings: every knob of the service, read once from the environment.

`get_settings()` is cached so the environment is read once per process; tests and the CLI
call `get_settings.cache_clear()` after changing it.

DATABASE_URL and REDIS_URL may carry a password, so they are checked for shape when loaded
and are only ever shown redacted (see `tracecat.urls`).
"""

from __future__ import annotations

import ipaddress
import ssl
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

import certifi
from limits import parse
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tracecat.exceptions import SettingsError
from tracecat.urls import (
    DATABASE_SCHEMES,
    DATABASE_URL_FORMS,
    HIDDEN,
    REDIS_SCHEMES,
    REDIS_URL_FORMS,
    check_url,
    redact_url,
)

PLACEHOLDERS = {"", "changeme", "change-me", "your_client_id", "your_client_secret", "xxx"}

# Pauses between webhook delivery attempts: about three days in all, then `failed`.
DEFAULT_WEBHOOK_RETRY_SECONDS = (
    5.0,
    30.0,
    120.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    28800.0,
    43200.0,
)


class Settings(BaseSettings):
    # pydantic quotes the input in a ValidationError's text; a URL may hold a password.
    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", hide_input_in_errors=True
    )

    microsoft_client_id: str | None = None
    microsoft_client_secret: str | None = None
    microsoft_tenant_id: str = "common"
    microsoft_redirect_uri: str | None = None
    microsoft_authority_host: str = "https://login.microsoftonline.com"
    microsoft_graph_url: str = "https://graph.microsoft.com/v1.0"
    microsoft_ca_bundle: Path | None = None
    microsoft_extra_scopes: Annotated[list[str], NoDecode] = Field(default_factory=list)

    database_url: str | None = None
    redis_url: str | None = None
    tracecat_data_dir: Path = Path("~/.tracecat-integrations")
    tracecat_encryption_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    tracecat_refresh_margin_seconds: int = 300
    tracecat_refresh_interval_seconds: int = 60
    tracecat_cache_seconds: float = 5.0
    tracecat_database_pool_size: int = 10
    tracecat_log_level: str = "INFO"

    # Teams change notifications relayed as signed webhooks (tracecat/notifications/):
    # - TRACECAT_PUBLIC_URL: where Microsoft reaches this service (Graph posts notifications
    #   to it); unset, no subscription can be made.
    # - TRACECAT_WEBHOOK_ALLOWED_NETWORKS: CIDRs (comma/space separated) a webhook target may
    #   resolve to although private/loopback/..., and the only ones plain http may reach.
    # - TRACECAT_WEBHOOK_RETRY_SECONDS: pauses between delivery attempts (each stretched by a
    #   little jitter); after the last one fails the delivery is `failed`.
    # - TRACECAT_SUBSCRIPTION_LIFETIME_SECONDS: lifetime asked of Graph for a subscription
    #   (Graph allows at most 4230 minutes for channel messages).
    # - TRACECAT_RESYNC_INTERVAL_SECONDS: how often missed messages are caught up; 0 = off.
    tracecat_public_url: str | None = None
    tracecat_webhook_allowed_networks: Annotated[
        list[ipaddress.IPv4Network | ipaddress.IPv6Network], NoDecode
    ] = Field(default_factory=list)
    tracecat_webhook_retry_seconds: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_RETRY_SECONDS)
    )
    tracecat_subscription_lifetime_seconds: int = Field(252000, gt=0, le=253800)
    tracecat_resync_interval_seconds: int = Field(300, ge=0)
    # The audit log (tracecat/audit/): events older than this are pruned, hourly.
    tracecat_audit_retention_days: int = Field(90, ge=1)

    # Abuse limits (tracecat/ratelimit.py, tracecat/http_limits.py):
    # - TRACECAT_RATE_LIMIT: requests per API key, in the `limits` notation ("600/minute").
    # - TRACECAT_AUTH_FAILURE_LIMIT: failed authentications per client address; over it the
    #   address is refused, valid keys included, until the window passes.
    # - TRACECAT_TRUSTED_PROXIES: CIDRs of proxies whose X-Forwarded-For names the client.
    # - TRACECAT_MAX_BODY_BYTES: the largest request body read.
    tracecat_rate_limit: str = "600/minute"
    tracecat_auth_failure_limit: str = "30/minute"
    tracecat_trusted_proxies: Annotated[
        list[ipaddress.IPv4Network | ipaddress.IPv6Network], NoDecode
    ] = Field(default_factory=list)
    tracecat_max_body_bytes: int = Field(1024 * 1024, gt=0)

    @field_validator("microsoft_extra_scopes", "tracecat_encryption_keys", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        # Comma- or space-separated in the environment, not JSON.
        if isinstance(value, str):
            return [item for item in value.replace(",", " ").split() if item]
        return value

    @field_validator("tracecat_public_url", mode="before")
    @classmethod
    def _public_url(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().rstrip("/") or None
            if value is not None and not value.startswith(("https://", "http://")):
                raise ValueError("must be an https:// URL (http:// only for the emulator)")
        return value

    @field_validator("tracecat_rate_limit", "tracecat_auth_failure_limit")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        try:
            parse(value)
        except ValueError:
            raise ValueError("use an amount per period, e.g. 600/minute or 10/second") from None
        return value

    @field_validator("tracecat_webhook_allowed_networks", "tracecat_trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        networks = []
        for item in value.replace(",", " ").split():
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not a network: use CIDRs like 10.0.0.0/8") from None
        return networks

    @field_validator("tracecat_webhook_retry_seconds", mode="before")
    @classmethod
    def _retry_seconds(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = [float(item) for item in value.replace(",", " ").split()]
            except ValueError:
                raise ValueError("use seconds separated by commas, e.g. 5,30,120") from None
        if isinstance(value, list) and (not value or any(float(v) <= 0 for v in value)):
            raise ValueError("use one or more positive pauses in seconds, e.g. 5,30,120")
        return value

    @field_validator("database_url", "redis_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # `DATABASE_URL=` in an env file means "the default", as it did before the checks.
        if isinstance(value, str):
            return value.strip() or None
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is not None:
            check_url(value, DATABASE_SCHEMES, DATABASE_URL_FORMS)
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None:
            check_url(value, REDIS_SCHEMES, REDIS_URL_FORMS)
        return value

    @field_validator("microsoft_authority_host", "microsoft_graph_url")
    @classmethod
    def _https_url(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("must be an https:// URL (MSAL and Graph refuse plain HTTP)")
        return value.rstrip("/")

    @field_validator("microsoft_ca_bundle")
    @classmethod
    def _readable_bundle(cls, value: Path | None) -> Path | None:
        if value is not None and not value.expanduser().is_file():
            raise ValueError(f"no such file: {value}")
        return value.expanduser() if value else None

    def __repr_args__(self) -> Any:
        # A settings object in a log line or traceback must not show a secret.
        for name, value in super().__repr_args__():
            if name in ("database_url", "redis_url") and isinstance(value, str):
                value = redact_url(value)
            elif name in ("microsoft_client_secret", "tracecat_encryption_keys") and value:
                value = HIDDEN
            yield name, value

    @property
    def data_dir(self) -> Path:
        return self.tracecat_data_dir.expanduser()

    @property
    def database_url_or_default(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'tracecat.db'}"

    @property
    def authority(self) -> str:
        return f"{self.microsoft_authority_host}/{self.microsoft_tenant_id}"

    def redirect_uri(self, host: str = "127.0.0.1", port: int = 8000) -> str:
        return self.microsoft_redirect_uri or (
            f"http://{host}:{port}/auth/integrations/microsoft/callback"
        )

    def require_microsoft_app(self) -> None:
        """Refuse to start without a real app registration, naming the variable."""
        for name in ("microsoft_client_id", "microsoft_client_secret"):
            value = getattr(self, name)
            if value is None or value.strip().lower() in PLACEHOLDERS:
                raise SettingsError(
                    f"{name.upper()} is not set: register an app in Entra ID (see README) "
                    "or run `tracecat-integrations serve --emulator`"
                )

    def ssl_context(self) -> ssl.SSLContext:
        """Trust for login and Graph: the system's and certifi's CAs plus MICROSOFT_CA_BUNDLE.

        Built explicitly so that REQUESTS_CA_BUNDLE / SSL_CERT_FILE in the environment cannot
        replace the bundle the operator configured.
        """
        context = ssl.create_default_context()
        context.load_verify_locations(cafile=certifi.where())
        if self.microsoft_ca_bundle:
            context.load_verify_locations(cafile=str(self.microsoft_ca_bundle))
        return context


@lru_cache
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]).upper() if error["loc"] else "settings"
        # Our validators' own words, without pydantic's "Value error, " in front.
        cause = error.get("ctx", {}).get("error")
        message = str(cause) if isinstance(cause, ValueError) else error["msg"]
        raise SettingsError(f"{name}: {message}") from None
