"""Microsoft sign-in: the MSAL OAuth provider.

MSAL does all of OAuth (PKCE, state, nonce, token requests); this module only turns its dict
answers into typed results and exceptions, in one place. The Teams client lives in
`tracecat.graph.teams`; it is re-exported here because the seed's documented example imports
it from this module.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import httpx
import msal
from msal.authority import WELL_KNOWN_AUTHORITY_HOSTS

from tracecat.audit.service import microsoft_error
from tracecat.config import Settings
from tracecat.exceptions import (
    ReauthorizationRequiredError,
    SignInError,
    TransientProviderError,
    UpstreamError,
)
from tracecat.graph.teams import MicrosoftTeamsClient

__all__ = [
    "CONFIGURATION_ERRORS",
    "REAUTHORIZATION_ERRORS",
    "RESERVED_SCOPES",
    "MicrosoftOAuthProvider",
    "MicrosoftTeamsClient",
    "TokenResult",
]

logger = logging.getLogger(__name__)

# The pinned contract uses query response mode: the browser-binding cookie (SameSite=Lax) then
# travels with Microsoft's redirect, which a cross-site form_post would not carry.
warnings.filterwarnings("ignore", message="response_mode='form_post' is recommended")

# Scopes MSAL adds itself and refuses to be given.
RESERVED_SCOPES = {"openid", "profile", "offline_access"}
# Token-endpoint errors that mean the grant is gone and only the user can restore it.
REAUTHORIZATION_ERRORS = {"invalid_grant", "interaction_required", "consent_required"}
# Token-endpoint errors that only fixing our app registration or settings can cure.
CONFIGURATION_ERRORS = {
    "invalid_client",
    "unauthorized_client",
    "invalid_request",
    "invalid_scope",
    "unsupported_grant_type",
}


class _NoTokenCache(msal.TokenCache):
    """Tokens live only in our encrypted columns, never in a process-wide MSAL cache, so a
    disconnect leaves nothing behind in memory."""

    def add(self, event: dict[str, Any], now: float | None = None) -> None:
        return None


@dataclass(frozen=True)
class TokenResult:
    access_token: str
    refresh_token: str | None
    # Seconds from now, as Microsoft said: the expiry is stamped on the app's clock when stored.
    expires_in: int
    scope: str
    account: dict[str, str | None] = field(default_factory=dict)

    def __repr__(self) -> str:  # keep tokens out of tracebacks and logs
        return f"TokenResult(expires_in={self.expires_in}, scope={self.scope!r})"

    @classmethod
    def from_msal(cls, result: dict[str, Any], requested: list[str]) -> TokenResult:
        claims = result.get("id_token_claims") or {}
        account = {
            "id": claims.get("oid") or claims.get("sub"),
            "tenant_id": claims.get("tid"),
            "username": claims.get("preferred_username")
            or claims.get("upn")
            or claims.get("email"),
            "display_name": claims.get("name"),
        }
        return cls(
            access_token=result["access_token"],
            refresh_token=result.get("refresh_token"),
            expires_in=int(result.get("expires_in", 3600)),
            # OAuth 2.0: an omitted scope means the requested scope was granted.
            scope=str(result.get("scope") or " ".join(requested)),
            account={k: v for k, v in account.items() if v},
        )


def _error_text(result: dict[str, Any]) -> str:
    """Microsoft's error code and the first line of its description (no trace ids)."""
    description = str(result.get("error_description") or "").splitlines()
    return f"{result.get('error')}: {description[0]}" if description else str(result.get("error"))


class MicrosoftOAuthProvider:
    """The authorization-code flow and refreshes, through one MSAL app per process."""

    scopes = ["Team.ReadBasic.All", "Channel.ReadBasic.All", "ChannelMessage.Send", "User.Read"]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # httpx, not requests: an explicit SSL context cannot be overridden by
        # REQUESTS_CA_BUNDLE, so MICROSOFT_CA_BUNDLE always wins.
        self.http_client = httpx.Client(verify=settings.ssl_context(), timeout=15.0)
        self._app: msal.ConfidentialClientApplication | None = None
        self._lock = threading.Lock()

    @property
    def requested_scopes(self) -> list[str]:
        extra = [s for s in self.settings.microsoft_extra_scopes if s not in RESERVED_SCOPES]
        return list(dict.fromkeys(self.scopes + extra))

    def _build_app(self) -> msal.ConfidentialClientApplication:
        host = urlparse(self.settings.microsoft_authority_host).hostname or ""
        try:
            return msal.ConfidentialClientApplication(
                self.settings.microsoft_client_id,
                client_credential=self.settings.microsoft_client_secret,
                authority=self.settings.authority,
                http_client=self.http_client,
                # Instance discovery only knows Microsoft's own clouds.
                instance_discovery=None if host in WELL_KNOWN_AUTHORITY_HOSTS else False,
                token_cache=_NoTokenCache(),
            )
        except (ValueError, httpx.HTTPError, msal.exceptions.MsalServiceError) as exc:
            logger.warning(
                "Microsoft login discovery failed at %s: %s", self.settings.authority, exc
            )
            raise TransientProviderError(
                f"cannot reach Microsoft login at {self.settings.authority}: "
                "check MICROSOFT_AUTHORITY_HOST, MICROSOFT_CA_BUNDLE and the network, then retry"
            ) from None

    @property
    def app(self) -> msal.ConfidentialClientApplication:
        with self._lock:
            if self._app is None:
                self._app = self._build_app()
            return self._app

    def initiate(self, redirect_uri: str) -> dict[str, Any]:
        """Start a flow; the returned dict (PKCE verifier, state, nonce) must be kept
        server-side and handed back to `complete`."""
        flow: dict[str, Any] = self.app.initiate_auth_code_flow(
            self.requested_scopes, redirect_uri=redirect_uri, response_mode="query"
        )
        return flow

    def complete(self, flow: dict[str, Any], params: dict[str, str]) -> TokenResult:
        try:
            result = self._call(lambda app: app.acquire_token_by_auth_code_flow(flow, params))
        # MSAL: ValueError for a state mismatch or a malformed answer, RuntimeError
        # (IdTokenError) for an ID token whose nonce is not this flow's.
        except (ValueError, RuntimeError):
            raise SignInError(
                "the sign-in response does not match this flow: start again",
                what="Microsoft's answer does not belong to this sign-in.",
                reason="flow_mismatch",
            ) from None
        if "error" in result:
            logger.info("Authorization code redemption refused: %s", result.get("error"))
            raise SignInError(
                f"Microsoft refused the sign-in ({_error_text(result)}): start again",
                what=f"Microsoft refused to complete the sign-in: {_error_text(result)}",
                reason="code_refused " + microsoft_error(result.get("error"), _error_text(result)),
            )
        return TokenResult.from_msal(result, self.requested_scopes)

    def refresh(self, refresh_token: str, *, fresh_app: bool = False) -> TokenResult:
        """Redeem a refresh token. `fresh_app` bypasses MSAL's per-app replay of a recent
        5xx answer, so a retry really reaches Microsoft."""
        try:
            result = self._call(
                lambda app: app.acquire_token_by_refresh_token(
                    refresh_token, self.requested_scopes
                ),
                fresh_app=fresh_app,
            )
        except ValueError:  # MSAL: the answer was not JSON (a proxy's or a gateway's page)
            raise TransientProviderError("Microsoft login answered with no token") from None
        if "error" not in result:
            return TokenResult.from_msal(result, self.requested_scopes)
        error = result.get("error")
        if error in REAUTHORIZATION_ERRORS:
            raise ReauthorizationRequiredError(_error_text(result))
        if error in CONFIGURATION_ERRORS:
            raise UpstreamError(
                f"Microsoft refused the token request ({_error_text(result)}): "
                "check MICROSOFT_CLIENT_ID, MICROSOFT_CLIENT_SECRET and the app's permissions"
            )
        # temporarily_unavailable, server_error, a 429's body, anything new: keep the grant.
        raise TransientProviderError(f"Microsoft login is unavailable ({_error_text(result)})")

    def _call(
        self,
        operation: Callable[[msal.ConfidentialClientApplication], dict[str, Any]],
        *,
        fresh_app: bool = False,
    ) -> dict[str, Any]:
        # A new app instance has its own, empty replay cache (and re-reads discovery).
        app = self._build_app() if fresh_app else self.app
        try:
            return operation(app)
        except (httpx.HTTPStatusError, msal.exceptions.MsalServiceError) as exc:
            # MSAL raises on 5xx (and its replay of one) instead of returning an error dict.
            logger.warning("Microsoft token endpoint failed: %s", type(exc).__name__)
            raise TransientProviderError("Microsoft login answered with a server error") from None
        except httpx.TransportError as exc:
            logger.warning("Microsoft token endpoint unreachable: %s", type(exc).__name__)
            raise TransientProviderError("Microsoft login did not answer in time") from None

    def close(self) -> None:
        self.http_client.close()
