"""Submission users kept in the database (``/v1/submission-users``), beside those of the
settings (``submission.users``). Ingress asks here at each AUTH; the API writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from moat.db import READ_ONLY, db_now, submission_users


@dataclass(frozen=True)
class SubmissionUser:
    name: str
    created_at: datetime
    created_by: str


class UserExists(Exception):
    pass


class SubmissionUserStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.reader = engine.execution_options(**{READ_ONLY: True})

    async def password_hash(self, name: str) -> str | None:
        async with self.reader.connect() as conn:
            row = (
                await conn.execute(
                    select(submission_users.c.password_hash).where(submission_users.c.name == name)
                )
            ).first()
        return None if row is None else str(row.password_hash)

    async def list(self) -> list[SubmissionUser]:
        query = select(
            submission_users.c.name, submission_users.c.created_at, submission_users.c.created_by
        ).order_by(submission_users.c.name)
        async with self.reader.connect() as conn:
            return [
                SubmissionUser(row.name, row.created_at, row.created_by)
                for row in await conn.execute(query)
            ]

    async def create(self, name: str, password_hash: str, by: str) -> SubmissionUser:
        user = SubmissionUser(name, db_now(), by)
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    submission_users.insert().values(
                        name=name,
                        password_hash=password_hash,
                        created_at=user.created_at,
                        created_by=by,
                    )
                )
        except IntegrityError:
            raise UserExists(name) from None
        return user

    async def delete(self, name: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(submission_users).where(submission_users.c.name == name)
            )
            return bool(result.rowcount)
