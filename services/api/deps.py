"""Dependencies shared by the routes: the repository and the admin token check."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from moat.broker import Broker
from moat.repository import Repository
from moat.settings import Settings

_bearer = HTTPBearer(auto_error=False)


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_broker(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


def get_repository(request: Request) -> Repository:
    repository: Repository = request.app.state.repository
    return repository


def require_admin(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> None:
    expected = settings.admin_token.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials else b""
    if not credentials or not secrets.compare_digest(given, expected):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid admin bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )


RepositoryDep = Annotated[Repository, Depends(get_repository)]
BrokerDep = Annotated[Broker, Depends(get_broker)]
AdminDep = Depends(require_admin)
