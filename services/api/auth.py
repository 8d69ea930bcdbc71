"""Who is asking: bearer tokens, their roles and scopes.

| role | sees | may change |
| --- | --- | --- |
| `admin` | every message | everything (tokens, lists, releases, webhooks) |
| `reader` | every message | nothing (403), as Rspamd's controller has a read-only password |
| `user` | mail addressed to one recipient address | that mail (release own spam, delete, lists) |
| `domain` | mail addressed to one protected domain | that mail (as a user, for the domain) |

The static ``admin_token`` of the settings is the bootstrap admin. Issued tokens are kept as a
SHA-256 of the secret (256 random bits: a slow hash would add nothing but latency, and a plain
one lets the lookup use an index). A message outside a token's scope answers 404, exactly like
an unknown id, so a scope cannot probe for other people's mail.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from moat.db import READ_ONLY, api_tokens, db_now
from moat.model import new_message_id

TOKEN_PREFIX = "moat_"
# last_used_at is written at most this often per token: a busy client must not turn every
# read into a write.
_USE_RESOLUTION = timedelta(minutes=1)


class Role(StrEnum):
    ADMIN = "admin"
    READER = "reader"
    USER = "user"
    DOMAIN = "domain"


@dataclass(frozen=True)
class Principal:
    role: Role
    name: str  # as the audit log names it
    token_id: str | None = None  # None: the bootstrap admin token of the settings
    scope: str | None = None  # user: the recipient address; domain: the domain (lower case)

    @property
    def sees_everything(self) -> bool:
        return self.role in (Role.ADMIN, Role.READER)

    @property
    def may_change(self) -> bool:
        return self.role != Role.READER

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    def covers(self, address: str) -> bool:
        """Whether mail to ``address`` is within this principal's scope."""
        if self.sees_everything:
            return True
        address = address.lower()
        if self.role == Role.USER:
            return address == self.scope
        return address.rpartition("@")[2].rstrip(".") == self.scope

    def sees(self, recipients: Iterable[str]) -> bool:
        return any(self.covers(address) for address in recipients)

    @property
    def actor(self) -> str:
        if self.token_id is None:
            return self.name
        return f"{self.role} token {self.name!r} ({self.token_id})"


BOOTSTRAP_ADMIN = Principal(Role.ADMIN, "admin token (settings)")


@dataclass(frozen=True)
class TokenRecord:
    id: str
    name: str
    role: Role
    scope: str | None
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.reader = engine.execution_options(**{READ_ONLY: True})

    async def issue(
        self,
        name: str,
        role: Role,
        scope: str | None,
        created_by: str,
        expires_at: datetime | None = None,
    ) -> tuple[TokenRecord, str]:
        """A new token and its secret, which is shown this once and kept only as a hash."""
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = TokenRecord(
            id=new_message_id(),
            name=name,
            role=role,
            scope=scope.lower() if scope else None,
            created_at=db_now(),
            created_by=created_by,
            expires_at=expires_at,
            revoked_at=None,
            last_used_at=None,
        )
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(api_tokens).values(
                    **{k: v for k, v in record.__dict__.items()},
                    secret_hash=hash_secret(secret),
                )
            )
        return record, secret

    async def authenticate(self, secret: str) -> Principal | None:
        """The principal a presented secret stands for; None if unknown, revoked or expired."""
        if not secret.startswith(TOKEN_PREFIX):
            return None
        async with self.reader.connect() as conn:
            row = (
                await conn.execute(
                    select(api_tokens).where(api_tokens.c.secret_hash == hash_secret(secret))
                )
            ).first()
        now = db_now()
        if row is None or row.revoked_at is not None:
            return None
        if row.expires_at is not None and row.expires_at <= now:
            return None
        if row.last_used_at is None or now - row.last_used_at >= _USE_RESOLUTION:
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(api_tokens).where(api_tokens.c.id == row.id).values(last_used_at=now)
                )
        return Principal(Role(row.role), row.name, row.id, row.scope)

    async def principal(self, token_id: str) -> Principal | None:
        """The principal of a token known by id (a web session keeps the id, never the
        secret); None once it is revoked or expired, which ends such sessions at once."""
        async with self.reader.connect() as conn:
            row = (
                await conn.execute(select(api_tokens).where(api_tokens.c.id == token_id))
            ).first()
        if row is None or row.revoked_at is not None:
            return None
        if row.expires_at is not None and row.expires_at <= db_now():
            return None
        return Principal(Role(row.role), row.name, row.id, row.scope)

    async def list(self) -> list[TokenRecord]:
        async with self.reader.connect() as conn:
            rows = await conn.execute(select(api_tokens).order_by(api_tokens.c.id.desc()))
            return [_record(row) for row in rows]

    async def revoke(self, token_id: str) -> TokenRecord | None:
        """Revoke a token (idempotent); None if there is no such token."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(api_tokens)
                .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=db_now())
            )
            row = (
                await conn.execute(select(api_tokens).where(api_tokens.c.id == token_id))
            ).first()
        return _record(row) if row is not None else None


def _record(row: object) -> TokenRecord:
    mapping = row._mapping  # type: ignore[attr-defined]
    return TokenRecord(
        id=mapping["id"],
        name=mapping["name"],
        role=Role(mapping["role"]),
        scope=mapping["scope"],
        created_at=mapping["created_at"],
        created_by=mapping["created_by"],
        expires_at=mapping["expires_at"],
        revoked_at=mapping["revoked_at"],
        last_used_at=mapping["last_used_at"],
    )
