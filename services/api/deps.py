"""Dependencies shared by the routes: the repository, the broker, and who is asking.

Routes declare what they need with the ``Annotated`` types below: ``CallerDep`` (any valid
token), ``WriterDep`` (not a reader: 403), ``AdminDep`` (an admin: 403 otherwise). A route that
works on one message gets it through ``visible_message``: 404 when it does not exist *or* lies
outside the caller's scope, so a scoped token cannot tell the two apart.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from moat.broker import Broker
from moat.repository import MessageRecord, Repository
from moat.sender_rules import SenderRuleStore
from moat.settings import Settings
from moat.spool import MessageStore
from services.api.audit import AuditLog
from services.api.auth import BOOTSTRAP_ADMIN, Principal, TokenStore
from services.api.quarantine import Quarantine

_bearer = HTTPBearer(auto_error=False, description="an API token, or the admin token")

UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_broker(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


def get_repository(request: Request) -> Repository:
    repository: Repository = request.app.state.repository
    return repository


def get_tokens(request: Request) -> TokenStore:
    tokens: TokenStore = request.app.state.tokens
    return tokens


def get_quarantine(request: Request) -> Quarantine:
    quarantine: Quarantine = request.app.state.quarantine
    return quarantine


def get_audit(request: Request) -> AuditLog:
    log: AuditLog = request.app.state.audit
    return log


def get_sender_rules(request: Request) -> SenderRuleStore:
    rules: SenderRuleStore = request.app.state.sender_rules
    return rules


def get_store(request: Request) -> MessageStore:
    store: MessageStore = request.app.state.store
    return store


async def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The principal behind the bearer token; 401 (with ``WWW-Authenticate: Bearer``) for no,
    an unknown, a revoked or an expired token."""
    if credentials is None or not credentials.credentials:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "a bearer token is required", headers=UNAUTHORIZED
        )
    given = credentials.credentials
    bootstrap = get_settings(request).admin_token.get_secret_value()
    if secrets.compare_digest(given.encode(), bootstrap.encode()):
        return BOOTSTRAP_ADMIN
    principal = await get_tokens(request).authenticate(given)
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "the token is not valid (unknown, revoked or expired)",
            headers=UNAUTHORIZED,
        )
    return principal


CallerDep = Annotated[Principal, Depends(get_caller)]


def require_writer(caller: CallerDep) -> Principal:
    if not caller.may_change:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "a reader token cannot change anything")
    return caller


def require_admin(caller: CallerDep) -> Principal:
    if not caller.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this needs an admin token")
    return caller


def require_staff(caller: CallerDep) -> Principal:
    """Admins and readers: those who see every message."""
    if not caller.sees_everything:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this needs an admin or reader token")
    return caller


WriterDep = Annotated[Principal, Depends(require_writer)]
AdminDep = Annotated[Principal, Depends(require_admin)]
StaffDep = Annotated[Principal, Depends(require_staff)]
RepositoryDep = Annotated[Repository, Depends(get_repository)]
BrokerDep = Annotated[Broker, Depends(get_broker)]
TokensDep = Annotated[TokenStore, Depends(get_tokens)]
AuditDep = Annotated[AuditLog, Depends(get_audit)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
QuarantineDep = Annotated[Quarantine, Depends(get_quarantine)]
SenderRulesDep = Annotated[SenderRuleStore, Depends(get_sender_rules)]
StoreDep = Annotated[MessageStore, Depends(get_store)]


def not_found(message_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no message {message_id!r}")


def valid_id(message_id: str) -> str:
    if not (message_id.isalnum() and len(message_id) <= 26):
        raise not_found(message_id)
    return message_id


async def visible_message(
    repository: Repository, caller: Principal, message_id: str, *, with_history: bool = True
) -> MessageRecord:
    """The message, if it exists and the caller may see it; 404 otherwise, the same 404."""
    record = await repository.get(valid_id(message_id), with_history=with_history)
    if record is None or not caller.sees(r.address for r in record.recipients):
        raise not_found(message_id)
    return record
