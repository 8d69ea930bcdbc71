"""``/v1/tokens``: administrators issue, list and revoke API tokens.

A token is for one recipient (``{"recipient": ...}``: that person's mail), one protected domain
(``{"domain": ...}``), or a role (``{"role": "admin" | "reader"}``). The secret is in the
response to ``POST`` once and never again; only its hash is kept.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field, model_validator

from moat.addresses import is_mailbox
from services.api.auth import Role, TokenRecord
from services.api.deps import AdminDep, AuditDep, SettingsDep, StaffDep, TokensDep
from services.api.models import IsoDateTime, UtcDateTime, as_naive_utc

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="what the token is for")
    recipient: str | None = Field(None, max_length=320, description="a user token: this mail")
    domain: str | None = Field(None, max_length=255, description="a domain token")
    role: Literal["admin", "reader"] | None = Field(None, description="an admin or reader token")
    expires_at: IsoDateTime | None = Field(None, description="ISO 8601; none: it does not expire")

    @model_validator(mode="after")
    def _one_kind(self) -> TokenCreate:
        kinds = [k for k in (self.recipient, self.domain, self.role) if k is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of recipient, domain or role")
        return self


class TokenPublic(BaseModel):
    id: str
    name: str
    role: Role
    scope: str | None
    created_at: UtcDateTime
    created_by: str
    expires_at: UtcDateTime | None
    revoked_at: UtcDateTime | None
    last_used_at: UtcDateTime | None


class TokenCreated(TokenPublic):
    token: str = Field(description="the secret: shown this once, never again")


class TokenList(BaseModel):
    count: int
    tokens: list[TokenPublic]


def _public(record: TokenRecord) -> TokenPublic:
    return TokenPublic.model_validate(record.__dict__)


@router.post("", response_model=TokenCreated, status_code=status.HTTP_201_CREATED)
async def issue_token(
    body: TokenCreate,
    caller: AdminDep,
    tokens: TokensDep,
    audit: AuditDep,
    settings: SettingsDep,
) -> TokenCreated:
    """Issue a token. The response carries its secret, once."""
    role: Role
    scope: str | None = None
    if body.recipient is not None:
        role, scope = Role.USER, body.recipient.strip().lower()
        if not is_mailbox(scope):
            raise HTTPException(422, f"not an address: {body.recipient!r}")
        domain = scope.rpartition("@")[2]
    elif body.domain is not None:
        role, scope = Role.DOMAIN, body.domain.strip().lower().rstrip(".")
        domain = scope
    else:
        role, domain = Role(body.role or "reader"), ""
    if scope is not None and settings.relay_for(domain) is None:
        raise HTTPException(422, f"{domain!r} is not a domain Moat protects")
    expires_at = as_naive_utc(body.expires_at) if body.expires_at else None
    record, secret = await tokens.issue(body.name, role, scope, caller.actor, expires_at)
    await audit.record(
        caller, "token_issued", None, f"{record.name} ({record.id}): {role} {scope or ''}".rstrip()
    )
    return TokenCreated(**_public(record).model_dump(), token=secret)


@router.get("", response_model=TokenList)
async def list_tokens(caller: StaffDep, tokens: TokensDep) -> TokenList:
    records = await tokens.list()
    return TokenList(count=len(records), tokens=[_public(r) for r in records])


@router.delete("/{token_id}", response_model=TokenPublic)
async def revoke_token(
    token_id: str, caller: AdminDep, tokens: TokensDep, audit: AuditDep
) -> TokenPublic:
    """Revoke a token: it stops working at once. Revoking twice is harmless."""
    record = await tokens.revoke(token_id) if token_id.isalnum() else None
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no token {token_id!r}")
    await audit.record(caller, "token_revoked", None, f"{record.name} ({record.id})")
    return _public(record)
