"""The two error factories: AADSTS bodies for the identity platform, OData bodies for Graph.

Like Azurite's StorageErrorFactory, every error the emulator can send is built
here, so wording and shape stay identical wherever it is raised. The texts
follow Microsoft's published AADSTS messages and Graph error codes.

The Graph one is GraphApiError, not GraphError: that name belongs to the product's
client-side exception (tracecat.exceptions.GraphError), which parses these bodies.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any


@dataclass
class AadError(Exception):
    """An OAuth error from the identity platform (token endpoint, authorize, discovery)."""

    error: str
    code: int
    text: str
    status: int = 400
    subcode: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def short_description(self) -> str:
        return f"AADSTS{self.code}: {self.text}"

    def body(
        self, base_url: str, trace_id: str, correlation_id: str, now: dt.datetime
    ) -> dict[str, Any]:
        """`now` is the emulator's clock (state.clock.utcnow()), which tests can move."""
        stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
        return {
            "error": self.error,
            "error_description": (
                f"{self.short_description}\r\nTrace ID: {trace_id}\r\n"
                f"Correlation ID: {correlation_id}\r\nTimestamp: {stamp}"
            ),
            "error_codes": [self.code],
            "timestamp": stamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{base_url}/error?code={self.code}",
        }


@dataclass
class GraphApiError(Exception):
    """An OData error from Microsoft Graph."""

    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def body(self, request_id: str, client_request_id: str, now: dt.datetime) -> dict[str, Any]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "innerError": {
                    "date": now.strftime("%Y-%m-%dT%H:%M:%S"),
                    "request-id": request_id,
                    "client-request-id": client_request_id,
                },
            }
        }


# -- identity platform -----------------------------------------------------------------


def aad_missing_parameter(name: str) -> AadError:
    return AadError(
        "invalid_request",
        900144,
        f"The request body must contain the following parameter: '{name}'.",
    )


def aad_post_only() -> AadError:
    return AadError("invalid_request", 900561, "The endpoint only accepts POST requests.")


def aad_tenant_not_found(tenant: str) -> AadError:
    return AadError(
        "invalid_tenant",
        90002,
        f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
        "signing into the correct cloud.",
    )


def aad_unknown_client(client_id: str, tenant_id: str) -> AadError:
    return AadError(
        "unauthorized_client",
        700016,
        f"Application with identifier '{client_id}' was not found in the directory "
        f"'{tenant_id}'. This can happen if the application has not been installed by the "
        "administrator of the tenant or consented to by any user in the tenant. You may have sent "
        "your authentication request to the wrong tenant.",
    )


def aad_missing_client_secret() -> AadError:
    return AadError(
        "invalid_client",
        7000218,
        "The request body must contain the following parameter: 'client_assertion' or "
        "'client_secret'.",
        status=401,
    )


def aad_invalid_client_secret(client_id: str) -> AadError:
    return AadError(
        "invalid_client",
        7000215,
        "Invalid client secret provided. Ensure the secret being sent in the request is the client "
        f"secret value, not the client secret ID, for a secret added to app '{client_id}'.",
        status=401,
    )


def aad_unsupported_grant_type(grant_type: str) -> AadError:
    return AadError(
        "unsupported_grant_type",
        70003,
        f"The app requested an unsupported grant type '{grant_type}'.",
    )


def aad_redirect_uri_mismatch(redirect_uri: str, client_id: str) -> AadError:
    return AadError(
        "invalid_request",
        50011,
        f"The redirect URI '{redirect_uri}' specified in the request does not match the redirect "
        f"URIs configured for the application '{client_id}'. Make sure the redirect URI sent in "
        "the request matches one added to your application in the Azure portal.",
    )


def aad_no_reply_address() -> AadError:
    return AadError(
        "invalid_request", 500113, "No reply address is registered for the application."
    )


def aad_unsupported_response_type(response_type: str) -> AadError:
    return AadError(
        "unsupported_response_type",
        700054,
        f"response_type '{response_type}' is not enabled for the application.",
    )


def aad_malformed_request(detail: str = "") -> AadError:
    text = "Invalid request. Request is malformed or invalid."
    return AadError("invalid_request", 9002313, f"{text} {detail}".strip())


def aad_invalid_code_challenge(detail: str) -> AadError:
    return AadError("invalid_request", 501491, detail)


def aad_invalid_scope(scope: str) -> AadError:
    return AadError(
        "invalid_scope",
        70011,
        f"The provided value for the input parameter 'scope' is not valid. The scope {scope} is "
        "not valid.",
    )


def aad_unknown_graph_scope(scope: str) -> AadError:
    return AadError(
        "invalid_client",
        650053,
        f"The application asked for scope '{scope}' that doesn't exist on the resource "
        "'00000003-0000-0000-c000-000000000000'. Contact the app vendor.",
    )


def aad_consent_required(client_id: str, scopes: str) -> AadError:
    return AadError(
        "invalid_grant",
        65001,
        "The user or administrator has not consented to use the application with ID "
        f"'{client_id}'. Send an interactive authorization request for this user and resource "
        f"(scopes: {scopes}).",
        subcode="consent_required",
    )


def aad_user_declined() -> AadError:
    return AadError(
        "access_denied", 65004, "User declined to consent to access the app.", subcode="cancel"
    )


def aad_login_required() -> AadError:
    return AadError(
        "login_required",
        50058,
        "A silent sign-in request was sent but no user is signed in.",
    )


def aad_invalid_grant() -> AadError:
    return AadError("invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")


def aad_code_redeemed() -> AadError:
    return AadError(
        "invalid_grant",
        54005,
        "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use "
        "an existing refresh token.",
    )


def aad_code_expired() -> AadError:
    return AadError(
        "invalid_grant",
        70008,
        "The provided authorization code or refresh token has expired due to inactivity. Send a "
        "new interactive authorization request for this user and resource.",
    )


def aad_code_client_mismatch() -> AadError:
    return AadError(
        "invalid_grant",
        70000,
        "Provided grant is invalid or malformed. The authorization code was issued to a different "
        "client.",
    )


def aad_code_redirect_mismatch(given: str, expected: str) -> AadError:
    return AadError(
        "invalid_grant",
        500112,
        f"The reply address '{given}' does not match the reply address '{expected}' provided when "
        "requesting Authorization code.",
    )


def aad_pkce_mismatch() -> AadError:
    return AadError(
        "invalid_grant",
        501481,
        "The Code_Verifier does not match the code_challenge supplied in the authorization "
        "request.",
    )


def aad_refresh_client_mismatch() -> AadError:
    return AadError(
        "invalid_grant",
        70000,
        "Provided grant is invalid or malformed. The refresh token was issued to a different "
        "client.",
    )


def aad_refresh_reused() -> AadError:
    # Entra itself never reuse-detects; this only answers under the strict rotation policy.
    return AadError(
        "invalid_grant",
        70000,
        "Provided grant is invalid or malformed. The refresh token was already redeemed.",
    )


def aad_grant_revoked(issued: str, valid_from: str) -> AadError:
    return AadError(
        "invalid_grant",
        50173,
        "The provided grant has expired due to it being revoked, a fresh auth token is needed. The "
        "user might have changed or reset their password. The grant was issued on "
        f"'{issued}' and the TokensValidFrom date (before which tokens are not valid) for this "
        f"user is '{valid_from}'.",
    )


def aad_refresh_inactive(issued: str, inactive_for: str) -> AadError:
    return AadError(
        "invalid_grant",
        700082,
        f"The refresh token has expired due to inactivity. The token was issued on {issued} and "
        f"was inactive for {inactive_for}.",
    )


DEFAULT_AAD_FAULTS: dict[int, tuple[str, int, str]] = {
    429: ("temporarily_unavailable", 50196, "The server temporarily throttled the request."),
    500: ("server_error", 90000, "An internal server error occurred."),
    503: ("temporarily_unavailable", 90033, "A transient error has occurred. Please try again."),
    504: ("temporarily_unavailable", 90033, "A transient error has occurred. Please try again."),
}


def aad_fault(
    status: int, error: str | None, text: str | None, retry_after: int | None
) -> AadError:
    default_error, code, default_text = DEFAULT_AAD_FAULTS.get(
        status,
        ("temporarily_unavailable", 90033, "A transient error has occurred. Please try again."),
    )
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return AadError(error or default_error, code, text or default_text, status, headers=headers)


# -- Microsoft Graph -------------------------------------------------------------------------


def graph_bad_request(message: str) -> GraphApiError:
    return GraphApiError(400, "BadRequest", message)


def graph_unknown_segment(segment: str) -> GraphApiError:
    return GraphApiError(400, "BadRequest", f"Resource not found for the segment '{segment}'.")


def graph_unauthenticated(message: str, authorization_uri: str) -> GraphApiError:
    challenge = (
        f'Bearer realm="", authorization_uri="{authorization_uri}", '
        'client_id="00000003-0000-0000-c000-000000000000"'
    )
    return GraphApiError(
        401, "InvalidAuthenticationToken", message, {"WWW-Authenticate": challenge}
    )


def graph_missing_scope(accepted: tuple[str, ...], granted: list[str]) -> GraphApiError:
    return GraphApiError(
        403,
        "Forbidden",
        f"Missing scope permissions on the request. API requires one of '{', '.join(accepted)}'. "
        f"Scopes on the request '{', '.join(granted)}'",
    )


def graph_forbidden(message: str) -> GraphApiError:
    return GraphApiError(403, "Forbidden", message)


def graph_not_found(message: str) -> GraphApiError:
    return GraphApiError(404, "NotFound", message)


def graph_validation_error(message: str) -> GraphApiError:
    """What subscription creation and renewal answer for a rule of theirs broken."""
    return GraphApiError(400, "ValidationError", message)


def graph_resource_not_found(message: str) -> GraphApiError:
    return GraphApiError(404, "ResourceNotFound", message)


def graph_method_not_allowed() -> GraphApiError:
    return GraphApiError(
        405, "MethodNotAllowed", "The HTTP method is not allowed on this resource."
    )


def graph_throttled(retry_after: int) -> GraphApiError:
    return GraphApiError(
        429, "TooManyRequests", "Please retry again later.", {"Retry-After": str(retry_after)}
    )


DEFAULT_GRAPH_CODES: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The request is malformed or incorrect."),
    401: ("InvalidAuthenticationToken", "Access token validation failure."),
    403: ("Forbidden", "Access is denied to the requested resource."),
    404: ("NotFound", "The requested resource doesn't exist."),
    409: ("Conflict", "The request conflicts with the current state."),
    429: ("TooManyRequests", "Please retry again later."),
    500: ("InternalServerError", "An internal server error occurred."),
    502: ("BadGateway", "The upstream service returned an invalid response."),
    503: ("ServiceNotAvailable", "The service is temporarily unavailable. Please retry later."),
    504: ("GatewayTimeout", "The upstream service did not respond in time."),
}


def graph_fault(
    status: int, code: str | None, message: str | None, retry_after: int | None
) -> GraphApiError:
    default_code, default_message = DEFAULT_GRAPH_CODES.get(
        status, ("UnknownError", "An error occurred.")
    )
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return GraphApiError(status, code or default_code, message or default_message, headers)
