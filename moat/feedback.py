"""Spam/ham feedback waiting to be learned (table ``feedback``): the API records it
(``Repository.record_feedback``), a scanner takes it and learns it
(``services/scanner/feedback.py``).

Several scanner replicas share the table. A replica *claims* a row before learning it: one
conditional ``UPDATE`` that only one replica can win (``result = 'claimed'``, ``learned_at`` the
claim's time). The row is settled afterwards with what became of it. A replica that dies holding
a claim leaves it to be taken again once ``lease`` has passed; learning is idempotent anyway
(by the message's digest), so a second learning of the same row only finds it learned.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from moat.db import READ_ONLY, db_now, feedback

CLAIMED = "claimed"


@dataclass(frozen=True)
class PendingFeedback:
    id: int
    message_id: str
    label: str  # spam | ham
    source: str


class FeedbackQueue:
    def __init__(self, engine: AsyncEngine, lease: timedelta = timedelta(minutes=5)) -> None:
        self.engine = engine
        self.reader = engine.execution_options(**{READ_ONLY: True})
        self.lease = lease

    def _takeable(self) -> Any:
        return or_(
            feedback.c.learned_at.is_(None),
            and_(feedback.c.result == CLAIMED, feedback.c.learned_at < db_now() - self.lease),
        )

    async def claim(self, limit: int = 20) -> list[PendingFeedback]:
        """Up to ``limit`` rows nobody is learning, oldest first, now this replica's."""
        async with self.reader.connect() as conn:
            rows = (
                await conn.execute(
                    select(feedback).where(self._takeable()).order_by(feedback.c.id).limit(limit)
                )
            ).all()
        claimed = []
        for row in rows:
            # Each claim is its own short transaction: a learning step that takes a while
            # must not hold a lock over the others.
            async with self.engine.begin() as conn:
                won = await conn.execute(
                    update(feedback)
                    .where(feedback.c.id == row.id, self._takeable())
                    .values(learned_at=db_now(), result=CLAIMED)
                )
            if won.rowcount == 1:
                claimed.append(PendingFeedback(row.id, row.message_id, row.label, row.source))
        return claimed

    async def settle(self, feedback_id: int, result: str) -> None:
        """What became of a claimed row: ``learned``, ``already`` (learned before with this
        label), ``gone`` (no copy of the message left) or ``failed: <why>``."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(feedback)
                .where(feedback.c.id == feedback_id)
                .values(learned_at=db_now(), result=result[:500])
            )

    async def pending(self) -> int:
        async with self.reader.connect() as conn:
            rows = await conn.execute(select(feedback.c.id).where(feedback.c.learned_at.is_(None)))
            return len(rows.all())
