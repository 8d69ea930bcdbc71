"""The audit log: who did what to which message, when. Every change the API makes is written
here (by the route that makes it), and ``GET /v1/audit`` reads it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from moat.db import READ_ONLY, audit, db_now
from services.api.auth import Principal


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    message_id: str | None
    detail: str


class AuditLog:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.reader = engine.execution_options(**{READ_ONLY: True})

    async def record(
        self, who: Principal | str, action: str, message_id: str | None = None, detail: str = ""
    ) -> None:
        actor = who if isinstance(who, str) else who.actor
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(audit).values(
                    at=db_now(), actor=actor, action=action, message_id=message_id, detail=detail
                )
            )

    async def entries(
        self,
        *,
        message_id: str | None = None,
        action: str | None = None,
        before_id: int | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Newest first; ``before_id`` continues a page."""
        query = select(audit).order_by(audit.c.id.desc()).limit(limit)
        if message_id is not None:
            query = query.where(audit.c.message_id == message_id)
        if action is not None:
            query = query.where(audit.c.action == action)
        if before_id is not None:
            query = query.where(audit.c.id < before_id)
        if since is not None:
            query = query.where(audit.c.at >= since)
        async with self.reader.connect() as conn:
            rows = await conn.execute(query)
            return [AuditEntry(**row._mapping) for row in rows]
