"""Settings: every knob of the service, read once from the environment.

`get_settings()` is cached so the environment is read once per process; tests and the CLI
call `get_settings.cache_clear()` after changing it.
"""

from __future__ import annotations

import ssl
from functools import lru_cache
from pathlib import Path
from typing import Annotated

import certifi
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PLACEHOLDERS = {"", "changeme", "change-me", "your_client_id", "your_client_secret", "xxx"}


class SettingsError(Exception):
    """A setting is missing or wrong; the message names the variable and is one line."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

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

    @field_validator("microsoft_extra_scopes", "tracecat_encryption_keys", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        # Comma- or space-separated in the environment, not JSON.
        if isinstance(value, str):
            return [item for item in value.replace(",", " ").split() if item]
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
        raise SettingsError(f"{name}: {error['msg']}") from None
