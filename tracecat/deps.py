"""FastAPI dependencies, as `Annotated` aliases used by every router."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from tracecat.auth.integrations.service import IntegrationService
from tracecat.auth.service import Principal, authenticate
from tracecat.config import Settings
from tracecat.exceptions import AuthenticationError

_bearer = HTTPBearer(
    auto_error=False, description="An API key from `tracecat-integrations users create`"
)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.db.session() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


async def get_current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthenticationError("missing API key: send `Authorization: Bearer <api key>`")
    return await authenticate(request.app.state.db.engine, credentials.credentials)


CurrentUser = Annotated[Principal, Depends(get_current_user)]


def get_integration_service(request: Request, session: SessionDep) -> IntegrationService:
    state = request.app.state
    return IntegrationService(session, state.settings, state.provider, state.refresh_locks)


IntegrationServiceDep = Annotated[IntegrationService, Depends(get_integration_service)]
