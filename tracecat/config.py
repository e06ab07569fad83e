"""Settings: every knob of the service, read once from the environment.

`get_settings()` is cached so the environment is read once per process; tests and the CLI
call `get_settings.cache_clear()` after changing it.

DATABASE_URL and REDIS_URL may carry a password, so they are checked for shape when loaded
and are only ever shown through `redact_url` (driver messages through `url_error_reason`).
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, unquote_plus

import certifi
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tracecat.exceptions import SettingsError

PLACEHOLDERS = {"", "changeme", "change-me", "your_client_id", "your_client_secret", "xxx"}

DATABASE_URL_FORMS = "sqlite:///path or postgresql://user:password@host:port/db"
REDIS_URL_FORMS = (
    "redis://:password@host:port/db, rediss://user:password@host:port/db or unix:///path"
)
DATABASE_SCHEMES = frozenset({"sqlite", "postgresql", "postgres"})
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
HIDDEN = "***"
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

    @field_validator("tracecat_webhook_allowed_networks", mode="before")
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


# --- URLs that may hold a password ---------------------------------------------------------

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://(.*)", re.DOTALL)
# One host (a name, IPv4 or [IPv6]) and an optional port; anything else is not shown.
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%\-]*)(?::(\d{1,5}))?")
# A user name or query key that cannot be a piece of a password that was split by mistake.
_NAME = re.compile(r"[A-Za-z0-9._~%!$&'()*+,;=\-]*")
_QUERY_KEY = re.compile(r"[A-Za-z0-9._\-]+")
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|auth|cred", re.IGNORECASE)
# Inside the user info these end it early for one library or another (SQLAlchemy splits at
# the first '@', urllib at the first '/', '?' or '#'), so the password would be misread.
_USERINFO_BREAKERS = "@/?#"


@dataclass(frozen=True)
class _UrlParts:
    scheme: str
    userinfo: str | None
    host: str
    path: str
    query: str | None


def _split(url: str) -> _UrlParts | None:
    """`scheme://[userinfo@]host[/path][?query]`, or None without `scheme://`.

    The user info runs to the LAST '@' (an unencoded '@' in a password is the usual mistake),
    except in an SQLite URL, which holds a path (and a path may contain '@').
    """
    match = _SCHEME.fullmatch(url.strip())
    if match is None:
        return None
    scheme, rest = match[1].lower(), match[2]
    userinfo: str | None = None
    if not (_backend(scheme) == "sqlite" and rest[:1] in ("", "/")):
        before, at, after = rest.rpartition("@")
        if at:
            userinfo, rest = before, after
    rest = rest.partition("#")[0]
    rest, question_mark, query = rest.partition("?")
    host, slash, path = rest.partition("/")
    return _UrlParts(scheme, userinfo, host, slash + path, query if question_mark else None)


def _backend(scheme: str) -> str:
    """`postgresql+asyncpg` -> `postgresql`: the driver suffix does not change the form."""
    return scheme.split("+", 1)[0]


def check_url(url: str, schemes: frozenset[str], forms: str) -> None:
    """Refuse a URL whose password a driver could misread. Messages never quote the URL."""
    parts = _split(url)
    if parts is None:
        raise ValueError(f"cannot parse it (not shown: it may hold a password): use {forms}")
    backend = _backend(parts.scheme)
    if backend not in schemes:
        raise ValueError(f"unsupported scheme {parts.scheme + '://'!r}: use {forms}")
    if parts.userinfo is not None and any(c in parts.userinfo for c in _USERINFO_BREAKERS):
        raise ValueError(
            "percent-encode '@', '/', '?' and '#' in the user name and password "
            "(e.g. '@' as %40): only the '@' before the host may stay"
        )
    if backend == "sqlite" and (parts.userinfo is not None or parts.host):
        raise ValueError(f"an SQLite URL has no host or password: use {forms}")
    host = _HOST.fullmatch(parts.host)
    if host is None or (host[1] is not None and int(host[1]) > 65535):
        raise ValueError(f"cannot parse its host and port: use {forms}")


def redact_url(url: str) -> str:
    """The URL as a person may see it: no password, no query value, no piece of either.

    Anything that does not parse unambiguously is replaced by HIDDEN rather than guessed at.
    """
    parts = _split(url)
    if parts is None:
        return "(not shown: not a URL)"
    if parts.userinfo is not None and any(c in parts.userinfo for c in "/?#"):
        # Then the last '@' may be inside a query value or path: what follows it may be the
        # end of a password.
        return f"{parts.scheme}://{HIDDEN}"
    shown = f"{parts.scheme}://"
    if parts.userinfo is not None:
        user, colon, _ = parts.userinfo.partition(":")
        user = user if _NAME.fullmatch(user) else HIDDEN
        shown += f"{user}:{HIDDEN}@" if colon else f"{user}@"
    shown += parts.host if _HOST.fullmatch(parts.host) else HIDDEN
    shown += parts.path
    if parts.query is not None:
        shown += "?" + "&".join(_redact_parameter(p) for p in parts.query.split("&"))
    return shown


def _redact_parameter(parameter: str) -> str:
    key, equals, _ = parameter.partition("=")
    if not parameter:
        return ""
    return f"{key}={HIDDEN}" if equals and _QUERY_KEY.fullmatch(key) else HIDDEN


def _secrets(url: str) -> set[str]:
    """The password and the query values that may be secret, as written and decoded (drivers
    see the latter). Short values of harmless-looking keys (`db=0`, `ssl=on`) are left out:
    masking every "0" would garble the message without hiding anything."""
    found = {url, url.strip()}
    parts = _split(url)
    if parts is not None:
        if parts.userinfo is not None:
            password = parts.userinfo.partition(":")[2]
            found |= {password, unquote(password)}
        for parameter in (parts.query or "").split("&"):
            key, _, value = parameter.partition("=")
            if _SECRET_KEY.search(key) or len(value) >= 4:
                found |= {value, unquote(value), unquote_plus(value)}
    return {secret for secret in found if secret}


def url_error_reason(exc: BaseException, url: str) -> str:
    """One line saying why `url` failed: the first line of the driver's own message (not the
    wrapper's, which repeats SQL and parameters) with the URL's secrets masked."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    # asyncpg errors adapted by SQLAlchemy read "<class 'asyncpg....'>: message".
    reason = re.sub(r"^<class '[\w.]+'>: ", "", lines[0]) if lines else type(cause).__name__
    reason = reason.replace(url, redact_url(url))
    for secret in sorted(_secrets(url), key=len, reverse=True):
        reason = reason.replace(secret, HIDDEN)
    return reason
