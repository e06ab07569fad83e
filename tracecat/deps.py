"""FastAPI dependencies, as `Annotated` aliases used by every router."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from tracecat.auth.integrations.service import IntegrationService
from tracecat.auth.service import Principal, authenticate
from tracecat.clients import request_address
from tracecat.exceptions import AuthenticationError
from tracecat.resources import AppResources
from tracecat.web.pages import Pages


class ApiKeyBearer(HTTPBearer):
    """`Authorization: Bearer <api key>` resolved to its user in one dependency (each level
    of FastAPI's dependency tree costs on every request); documented in OpenAPI as HTTPBearer."""

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        credentials = await super().__call__(request)
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise AuthenticationError("missing API key: send `Authorization: Bearer <api key>`")
        resources: AppResources = request.app.state.resources
        address = request_address(request)
        await resources.rate_limits.refuse_if_blocked(address)
        try:
            principal = await authenticate(
                resources.database, credentials.credentials, resources.cache
            )
        except AuthenticationError:
            await resources.rate_limits.count_failure(address)
            raise
        await resources.rate_limits.count_request(str(principal.key_id), principal.id, address)
        return principal


CurrentUser = Annotated[
    Principal,
    Depends(
        ApiKeyBearer(
            auto_error=False, description="An API key from `tracecat-integrations users create`"
        )
    ),
]


async def get_integration_service(request: Request) -> IntegrationService:
    return request.app.state.resources.integrations


IntegrationServiceDep = Annotated[IntegrationService, Depends(get_integration_service)]


async def get_pages(request: Request) -> Pages:
    return request.app.state.pages


PagesDep = Annotated[Pages, Depends(get_pages)]


async def get_resources(request: Request) -> AppResources:
    return request.app.state.resources


ResourcesDep = Annotated[AppResources, Depends(get_resources)]
