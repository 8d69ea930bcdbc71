"""Every query Moat runs, one method per step of a message's life.

Each method is one transaction. Steps that may be repeated after a crash (redelivery) are written
as conditional updates: they change a row only if it is still in the state the step expects, and
report whether they did, so a repeated step never yields a second verdict or a second delivery.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from moat.db import db_now, events, messages, recipients
from moat.model import Finding, MessageStatus, RecipientStatus, Verdict

SCANNABLE = (MessageStatus.RECEIVED, MessageStatus.QUEUED)
DELIVERABLE = (MessageStatus.DELIVERING, MessageStatus.DEFERRED)


class RecipientRecord(BaseModel):
    id: int
    address: str
    domain: str
    status: RecipientStatus
    attempts: int
    remote_host: str | None
    reply: str | None
    updated_at: datetime


class EventRecord(BaseModel):
    at: datetime
    service: str
    event: str
    detail: str


class MessageRecord(BaseModel):
    id: str
    status: MessageStatus
    mail_from: str
    client_address: str
    helo: str
    size: int
    smtp_utf8: bool
    received_at: datetime
    updated_at: datetime
    verdict: str | None
    score: float | None
    findings: list[Finding] | None
    attempts: int
    next_attempt_at: datetime | None
    bounce_of: str | None
    reason: str | None
    recipients: list[RecipientRecord] = []
    events: list[EventRecord] = []


@dataclass(frozen=True)
class RecipientOutcome:
    """The result of one delivery attempt for one recipient."""

    recipient_id: int
    status: RecipientStatus
    reply: str
    remote_host: str | None = None


@dataclass(frozen=True)
class NewMessage:
    message_id: str
    mail_from: str
    rcpt_tos: Sequence[str]
    size: int
    client_address: str = ""
    helo: str = ""
    smtp_utf8: bool = False


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def _event(message_id: str, service: str, name: str, detail: str = "") -> dict[str, Any]:
    return {"message_id": message_id, "at": db_now(), "service": service, "event": name,
            "detail": detail}


class Repository:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def close(self) -> None:
        await self.engine.dispose()

    # --- ingress ---------------------------------------------------------------------------

    async def record_received(self, new: NewMessage) -> None:
        async with self.engine.begin() as conn:
            await self._insert_message(conn, new, MessageStatus.RECEIVED, service="ingress")

    async def mark_queued(self, message_ids: Iterable[str]) -> None:
        ids = list(message_ids)
        if not ids:
            return
        now = db_now()
        async with self.engine.begin() as conn:
            await conn.execute(
                update(messages)
                .where(messages.c.id.in_(ids), messages.c.status == MessageStatus.RECEIVED)
                .values(status=MessageStatus.QUEUED, updated_at=now)
            )

    async def mark_rejected(self, message_id: str, reason: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(messages)
                .where(messages.c.id == message_id)
                .values(status=MessageStatus.REJECTED, reason=reason, updated_at=db_now())
            )
            await conn.execute(insert(events).values(_event(message_id, "ingress", "rejected",
                                                            reason)))

    async def unconfirmed(self, older_than: timedelta, limit: int = 500) -> list[str]:
        """Messages stored but whose publish for scanning was never recorded as confirmed."""
        cutoff = db_now() - older_than
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(messages.c.id)
                .where(messages.c.status == MessageStatus.RECEIVED,
                       messages.c.received_at < cutoff)
                .order_by(messages.c.id)
                .limit(limit)
            )
            return [row.id for row in rows]

    # --- scanner ---------------------------------------------------------------------------

    async def record_verdict(self, message_id: str, verdict: Verdict, status: MessageStatus) -> bool:
        """Store the verdict once; False if the message already has one (a redelivery)."""
        now = db_now()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(messages)
                .where(messages.c.id == message_id, messages.c.status.in_(SCANNABLE))
                .values(
                    status=status,
                    verdict=verdict.verdict,
                    score=verdict.score,
                    findings=[finding.model_dump(mode="json") for finding in verdict.findings],
                    next_attempt_at=now,
                    updated_at=now,
                )
            )
            if result.rowcount != 1:
                return False
            detail = f"{verdict.verdict} score={verdict.score:.2f} action={verdict.action}"
            await conn.execute(insert(events).values(_event(message_id, "scanner", "scanned",
                                                            detail)))
            return True

    # --- delivery --------------------------------------------------------------------------

    async def claim_for_delivery(self, message_id: str, attempt: int, lease: timedelta) -> bool:
        """Take the message for this attempt, unless another worker holds it or the attempt
        was already made (a stale or duplicate request)."""
        now = db_now()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(messages)
                .where(
                    messages.c.id == message_id,
                    messages.c.status.in_(DELIVERABLE),
                    messages.c.attempts == attempt,
                    or_(messages.c.lease_until.is_(None), messages.c.lease_until < now),
                )
                .values(lease_until=now + lease)
            )
            return bool(result.rowcount == 1)

    async def record_attempt(
        self,
        message_id: str,
        outcomes: Sequence[RecipientOutcome],
        status: MessageStatus,
        next_attempt_at: datetime | None,
        detail: str,
        bounce: NewMessage | None = None,
    ) -> None:
        """Write one attempt's per-recipient outcomes and the message's new state, release the
        lease, and create the DSN (already spooled) if one is due, all in one transaction."""
        now = db_now()
        async with self.engine.begin() as conn:
            for outcome in outcomes:
                await conn.execute(
                    update(recipients)
                    .where(recipients.c.id == outcome.recipient_id)
                    .values(
                        status=outcome.status,
                        reply=outcome.reply,
                        remote_host=outcome.remote_host,
                        attempts=recipients.c.attempts + 1,
                        updated_at=now,
                    )
                )
            await conn.execute(
                update(messages)
                .where(messages.c.id == message_id)
                .values(
                    status=status,
                    attempts=messages.c.attempts + 1,
                    next_attempt_at=next_attempt_at,
                    lease_until=None,
                    reason=detail if status == MessageStatus.DEFERRED else None,
                    updated_at=now,
                )
            )
            await conn.execute(insert(events).values(_event(message_id, "delivery", status,
                                                            detail)))
            if bounce is not None:
                await self._insert_message(
                    conn, bounce, MessageStatus.DELIVERING, service="delivery",
                    bounce_of=message_id,
                )
                await conn.execute(insert(events).values(
                    _event(message_id, "delivery", "dsn_queued", f"DSN {bounce.message_id}")))

    async def release_lease(self, message_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(messages).where(messages.c.id == message_id).values(lease_until=None))

    async def overdue_for_delivery(self, grace: timedelta, limit: int = 500) -> list[tuple[str, int]]:
        """Mail whose next delivery attempt should have happened ``grace`` ago and that no
        worker holds: its request was lost (crash before publish). Returns (id, attempt)."""
        now = db_now()
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(messages.c.id, messages.c.attempts)
                .where(
                    messages.c.status.in_(DELIVERABLE),
                    messages.c.next_attempt_at < now - grace,
                    or_(messages.c.lease_until.is_(None), messages.c.lease_until < now),
                )
                .order_by(messages.c.next_attempt_at)
                .limit(limit)
            )
            return [(row.id, row.attempts) for row in rows]

    # --- any stage ---------------------------------------------------------------------------

    async def mark_failed(self, message_id: str, service: str, reason: str) -> None:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(messages)
                .where(messages.c.id == message_id)
                .values(status=MessageStatus.FAILED, reason=reason, lease_until=None,
                        updated_at=db_now())
            )
            if result.rowcount != 1:
                return  # no such message: nothing to record it on
            await conn.execute(insert(events).values(_event(message_id, service, "failed",
                                                            reason)))

    async def add_event(self, message_id: str, service: str, name: str, detail: str = "") -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(events).values(_event(message_id, service, name, detail)))

    async def get(self, message_id: str, *, with_history: bool = True) -> MessageRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(messages).where(messages.c.id == message_id))).first()
            if row is None:
                return None
            record = MessageRecord.model_validate(row._mapping, from_attributes=False)
            rcpt_rows = await conn.execute(
                select(recipients).where(recipients.c.message_id == message_id)
                .order_by(recipients.c.id)
            )
            record.recipients = [RecipientRecord.model_validate(r._mapping) for r in rcpt_rows]
            if with_history:
                event_rows = await conn.execute(
                    select(events).where(events.c.message_id == message_id).order_by(events.c.id)
                )
                record.events = [EventRecord.model_validate(e._mapping) for e in event_rows]
            return record

    async def count_by_status(self) -> dict[str, int]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(messages.c.status, func.count()).group_by(messages.c.status)
            )
            return {row[0]: row[1] for row in rows}

    async def _insert_message(
        self, conn: AsyncConnection, new: NewMessage, status: MessageStatus, *, service: str,
        bounce_of: str | None = None,
    ) -> None:
        now = db_now()
        await conn.execute(
            insert(messages).values(
                id=new.message_id,
                status=status,
                mail_from=new.mail_from,
                client_address=new.client_address,
                helo=new.helo,
                size=new.size,
                smtp_utf8=new.smtp_utf8,
                received_at=now,
                updated_at=now,
                attempts=0,
                next_attempt_at=now if status == MessageStatus.DELIVERING else None,
                bounce_of=bounce_of,
            )
        )
        await conn.execute(
            insert(recipients),
            [
                {"message_id": new.message_id, "address": address, "domain": _domain(address),
                 "status": RecipientStatus.PENDING, "attempts": 0, "updated_at": now}
                for address in new.rcpt_tos
            ],
        )
        detail = f"from=<{new.mail_from}> to={len(new.rcpt_tos)} size={new.size}"
        if new.client_address:
            detail += f" client={new.client_address}"
        await conn.execute(insert(events).values(_event(new.message_id, service, "received",
                                                        detail)))


__all__ = ["MessageRecord", "NewMessage", "RecipientOutcome", "Repository"]
