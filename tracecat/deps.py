"""FastAPI dependencies, as `Annotated` aliases used by every router."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tracecat.auth.integrations.service import IntegrationService
from tracecat.auth.service import Principal, authenticate
from tracecat.exceptions import AuthenticationError

_bearer = HTTPBearer(
    auto_error=False, description="An API key from `tracecat-integrations users create`"
)


async def get_current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthenticationError("missing API key: send `Authorization: Bearer <api key>`")
    state = request.app.state
    return await authenticate(state.db.engine, credentials.credentials, state.cache)


CurrentUser = Annotated[Principal, Depends(get_current_user)]


async def get_integration_service(request: Request) -> IntegrationService:
    state = request.app.state
    return IntegrationService(
        state.db, state.settings, state.provider, state.refresh_locks, state.cache
    )


IntegrationServiceDep = Annotated[IntegrationService, Depends(get_integration_service)]
