"""Microsoft Graph v1.0 for Teams (filled in below)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1.0")
