"""Webhooks: administrators register URLs; the dispatcher POSTs them signed JSON events.

Two steps, each safe with several API replicas running it:

1. **Fan-out.** The ``events`` timeline is followed with a cursor kept in the database
   (``cursors``, row ``webhooks``), locked while it moves: each new timeline row that is a
   webhook event (``FROM_TIMELINE``) becomes one ``webhook_events`` row per webhook that wants
   it, in the transaction that moves the cursor. A restart resumes at the cursor; two replicas
   take turns. On PostgreSQL an id can commit after a higher one (ids are handed out at
   insert, rows appear at commit), so the cursor never passes a missing id until the rows
   after it are ``GAP_GRACE`` old: by then the missing one was rolled back.
2. **Delivery.** Due ``pending`` rows are claimed (``FOR UPDATE SKIP LOCKED``, and their next
   attempt pushed a lease ahead, so a replica that dies mid-POST leaves them to another),
   POSTed, and marked ``delivered`` on a 2xx, else retried after ``webhooks.retry_schedule``
   and marked ``failed`` after its last delay. At least once: a receiver dedupes on ``id``.

Each POST is signed like Stripe's: ``Moat-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
"<t>.<body>" under the webhook's secret>`` (``signature()``; a receiver's check is in the README).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import ssl
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

import httpx
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from moat import __version__
from moat.db import (
    READ_ONLY,
    cursors,
    db_now,
    events,
    messages,
    recipients,
    webhook_events,
    webhooks,
)
from moat.model import new_message_id
from moat.services import log_failure
from moat.settings import WebhookSettings

log = logging.getLogger("api")

EventType = Literal["quarantined", "released", "delivered", "bounced", "deleted", "purged"]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)

# Timeline event -> the webhook events it is. A partial delivery is both: some recipients
# got it, the others bounced.
FROM_TIMELINE: dict[str, tuple[str, ...]] = {
    "quarantined": ("quarantined",),
    "released": ("released",),
    "delivered": ("delivered",),
    "partially_delivered": ("delivered", "bounced"),
    "bounced": ("bounced",),
    "deleted": ("deleted",),
    "purged": ("purged",),
}

CURSOR = "webhooks"
GAP_GRACE = timedelta(seconds=60)
FAN_OUT_BATCH = 500
DELIVERY_BATCH = 50
CONCURRENT_POSTS = 8
SECRET_PREFIX = "whsec_"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Moat-Signature`` header of a POST of ``body`` at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def _iso(value: datetime | None) -> str | None:
    return value.replace(tzinfo=UTC).isoformat() if value is not None else None


@dataclass(frozen=True)
class WebhookRecord:
    id: str
    url: str
    events: list[str]
    active: bool
    created_at: datetime
    created_by: str


@dataclass(frozen=True)
class DeliveryRecord:
    id: int
    event: str
    event_id: str
    status: str  # pending | delivered | failed
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    last_error: str | None
    delivered_at: datetime | None


class Webhooks:
    def __init__(self, engine: AsyncEngine, settings: WebhookSettings) -> None:
        self.engine = engine
        self.reader = engine.execution_options(**{READ_ONLY: True})
        self.settings = settings

    # --- registration ---

    async def create(self, url: str, wanted: list[str], by: str) -> tuple[WebhookRecord, str]:
        """A new webhook and its secret, shown this once (it is kept: it signs every POST)."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        record = WebhookRecord(new_message_id(), url, sorted(set(wanted)), True, db_now(), by)
        async with self.engine.begin() as conn:
            first = (
                await conn.execute(select(webhooks.c.id).where(webhooks.c.active).limit(1))
            ).first() is None
            if first:
                # While no webhook exists the dispatcher does not follow the timeline (it
                # would write for nothing); the first one starts it at the present, instead
                # of walking all of the past that no webhook can want.
                top = (await conn.execute(select(func.max(events.c.id)))).scalar() or 0
                moved = await conn.execute(
                    update(cursors)
                    .where(cursors.c.name == CURSOR, cursors.c.position < top)
                    .values(position=top, updated_at=record.created_at)
                )
                exists = (
                    await conn.execute(select(cursors.c.name).where(cursors.c.name == CURSOR))
                ).first()
                if not moved.rowcount and exists is None:
                    await conn.execute(
                        insert(cursors).values(name=CURSOR, position=top, updated_at=db_now())
                    )
            await conn.execute(insert(webhooks).values(**record.__dict__, secret=secret))
        return record, secret

    async def registered(self) -> list[WebhookRecord]:
        async with self.reader.connect() as conn:
            rows = await conn.execute(select(webhooks).order_by(webhooks.c.id))
            return [_webhook(row) for row in rows]

    async def get(self, webhook_id: str) -> WebhookRecord | None:
        async with self.reader.connect() as conn:
            row = (await conn.execute(select(webhooks).where(webhooks.c.id == webhook_id))).first()
        return _webhook(row) if row is not None else None

    async def remove(self, webhook_id: str) -> WebhookRecord | None:
        """Delete a webhook and its outbox (nothing more is sent to it)."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(select(webhooks).where(webhooks.c.id == webhook_id))).first()
            if row is None:
                return None
            await conn.execute(delete(webhook_events).where(webhook_events.c.webhook_id == row.id))
            await conn.execute(delete(webhooks).where(webhooks.c.id == row.id))
        return _webhook(row)

    async def deliveries(
        self, webhook_id: str, status: str | None = None, limit: int = 100
    ) -> list[DeliveryRecord]:
        """The webhook's events, newest first: what was sent, what waits, what failed and why."""
        query = (
            select(webhook_events)
            .where(webhook_events.c.webhook_id == webhook_id)
            .order_by(webhook_events.c.id.desc())
            .limit(limit)
        )
        if status is not None:
            query = query.where(webhook_events.c.status == status)
        async with self.reader.connect() as conn:
            rows = await conn.execute(query)
            return [
                DeliveryRecord(
                    id=row.id,
                    event=row.event,
                    event_id=str(row.payload.get("id", "")),
                    status=row.status,
                    attempts=row.attempts,
                    created_at=row.created_at,
                    next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
                    last_error=row.last_error,
                    delivered_at=row.delivered_at,
                )
                for row in rows
            ]

    # --- the dispatcher ---

    async def run(self) -> None:
        """Fan out and deliver, every ``poll_interval`` seconds, until cancelled."""
        verify: ssl.SSLContext | bool = True
        if self.settings.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(self.settings.ca_file))
        async with httpx.AsyncClient(
            timeout=self.settings.timeout, verify=verify, follow_redirects=False
        ) as client:
            while True:
                try:
                    while await self.fan_out() >= FAN_OUT_BATCH:
                        pass
                    while await self.deliver_due(client) >= DELIVERY_BATCH:
                        pass
                except Exception as exc:
                    log_failure(log, "webhook dispatch failed; trying again shortly", exc)
                await asyncio.sleep(self.settings.poll_interval)

    async def fan_out(self) -> int:
        """Turn the next timeline rows into webhook events; returns how many rows it passed."""
        # A look first, without the write lock (SQLite's is the whole database): most polls
        # find nothing to do.
        async with self.reader.connect() as conn:
            if (
                await conn.execute(select(webhooks.c.id).where(webhooks.c.active).limit(1))
            ).first() is None:
                return 0
            position = (
                await conn.execute(select(cursors.c.position).where(cursors.c.name == CURSOR))
            ).scalar()
            top = (await conn.execute(select(func.max(events.c.id)))).scalar() or 0
        if position is not None and top <= position:
            return 0
        try:
            async with self.engine.begin() as conn:
                return await self._fan_out(conn)
        except IntegrityError:
            return 0  # two replicas created the cursor at once: the other one goes on

    async def _fan_out(self, conn: AsyncConnection) -> int:
        now = db_now()
        position = (
            await conn.execute(
                select(cursors.c.position).where(cursors.c.name == CURSOR).with_for_update()
            )
        ).scalar()
        if position is None:
            await conn.execute(insert(cursors).values(name=CURSOR, position=0, updated_at=now))
            position = 0
        top = (await conn.execute(select(func.max(events.c.id)))).scalar() or 0
        hooks = [
            _webhook(row) for row in await conn.execute(select(webhooks).where(webhooks.c.active))
        ]
        if not hooks:
            # Nothing wants the past: a webhook receives what happens after its creation.
            if top != position:
                await self._move(conn, top, now)
            return 0
        rows = (
            await conn.execute(
                select(events)
                .where(events.c.id > position)
                .order_by(events.c.id)
                .limit(FAN_OUT_BATCH)
            )
        ).all()
        taken = []
        expected = position + 1
        for row in rows:
            if row.id != expected and now - row.at < GAP_GRACE:
                break  # an id below this one may still commit: wait for it
            taken.append(row)
            expected = row.id + 1
        if not taken:
            return 0
        wanted = [
            (row, kind, hook)
            for row in taken
            for kind in FROM_TIMELINE.get(row.event, ())
            for hook in hooks
            if kind in hook.events and row.at >= hook.created_at
        ]
        if wanted:
            summaries = await _summaries(conn, {row.message_id for row, _, _ in wanted})
            await conn.execute(
                insert(webhook_events),
                [
                    {
                        "webhook_id": hook.id,
                        "event": kind,
                        "payload": {
                            "id": f"evt_{row.id}_{kind}",
                            "type": kind,
                            "created_at": _iso(row.at),
                            "data": {
                                "message_id": row.message_id,
                                "service": row.service,
                                "detail": row.detail,
                                "message": summaries.get(row.message_id),
                            },
                        },
                        "created_at": now,
                        "status": "pending",
                        "attempts": 0,
                        "next_attempt_at": now,
                    }
                    for row, kind, hook in wanted
                ],
            )
        await self._move(conn, taken[-1].id, now)
        return len(taken)

    @staticmethod
    async def _move(conn: AsyncConnection, position: int, now: datetime) -> None:
        await conn.execute(
            update(cursors)
            .where(cursors.c.name == CURSOR)
            .values(position=position, updated_at=now)
        )

    async def deliver_due(self, client: httpx.AsyncClient) -> int:
        """POST the events that are due; returns how many were tried."""
        now = db_now()
        lease = timedelta(seconds=self.settings.timeout + 30)
        async with self.reader.connect() as conn:
            due = (
                await conn.execute(
                    select(webhook_events.c.id)
                    .where(
                        webhook_events.c.status == "pending",
                        webhook_events.c.next_attempt_at <= now,
                    )
                    .limit(1)
                )
            ).first()
        if due is None:
            return 0
        async with self.engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(
                        webhook_events.c.id,
                        webhook_events.c.event,
                        webhook_events.c.payload,
                        webhook_events.c.attempts,
                        webhooks.c.url,
                        webhooks.c.secret,
                    )
                    .select_from(webhook_events.join(webhooks))
                    .where(
                        webhook_events.c.status == "pending",
                        webhook_events.c.next_attempt_at <= now,
                    )
                    .order_by(webhook_events.c.id)
                    .limit(DELIVERY_BATCH)
                    .with_for_update(of=webhook_events, skip_locked=True)
                )
            ).all()
            if not rows:
                return 0
            await conn.execute(
                update(webhook_events)
                .where(webhook_events.c.id.in_([row.id for row in rows]))
                .values(next_attempt_at=now + lease)
            )
        gate = asyncio.Semaphore(CONCURRENT_POSTS)

        async def one(row: Any) -> None:
            async with gate:
                error = await self._post(client, row)
            await self._record(row.id, row.attempts + 1, error)

        await asyncio.gather(*(one(row) for row in rows))
        return len(rows)

    async def _post(self, client: httpx.AsyncClient, row: Any) -> str | None:
        """POST one event; None on a 2xx, else what went wrong (for the deliveries list)."""
        body = json.dumps(row.payload, separators=(",", ":"), sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"Moat-Webhooks/{__version__}",
            "Moat-Event": row.event,
            "Moat-Delivery": str(row.id),
            "Moat-Signature": signature(row.secret, int(time.time()), body),
        }
        try:
            response = await client.post(row.url, content=body, headers=headers)
        except httpx.TimeoutException:
            return f"timed out after {self.settings.timeout:g}s"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__
        if 200 <= response.status_code < 300:
            return None
        text = " ".join(response.text.split())[:200]
        return f"HTTP {response.status_code}" + (f": {text}" if text else "")

    async def _record(self, event_id: int, attempts: int, error: str | None) -> None:
        now = db_now()
        # A delivery that succeeds keeps the last error of the tries before it: the list
        # shows that a receiver had trouble, not only that it recovered.
        values: dict[str, Any] = {"attempts": attempts}
        if error is not None:
            values["last_error"] = error
        if error is None:
            values.update(status="delivered", delivered_at=now)
        elif attempts > len(self.settings.retry_schedule):
            values.update(status="failed")
            log.warning("webhook event %d failed after %d attempts: %s", event_id, attempts, error)
        else:
            delay = self.settings.retry_schedule[attempts - 1]
            values.update(next_attempt_at=now + timedelta(seconds=delay))
        async with self.engine.begin() as conn:
            await conn.execute(
                update(webhook_events)
                .where(webhook_events.c.id == event_id, webhook_events.c.status == "pending")
                .values(**values)
            )

    async def prune(self) -> int:
        """Forget delivered and failed events older than ``webhooks.keep``."""
        cutoff = db_now() - timedelta(seconds=self.settings.keep)
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(webhook_events).where(
                    webhook_events.c.status.in_(["delivered", "failed"]),
                    webhook_events.c.created_at < cutoff,
                )
            )
        return int(result.rowcount or 0)


async def _summaries(conn: AsyncConnection, message_ids: set[str]) -> dict[str, dict[str, Any]]:
    """What a receiver needs to know of each message, as of the fan-out."""
    found: dict[str, dict[str, Any]] = {}
    rows = await conn.execute(select(messages).where(messages.c.id.in_(sorted(message_ids))))
    for row in rows:
        found[row.id] = {
            "status": row.status,
            "mail_from": row.mail_from,
            "subject": row.subject,
            "verdict": row.verdict,
            "score": row.score,
            "received_at": _iso(row.received_at),
            "bounce_of": row.bounce_of,
            "recipients": [],
        }
    held: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in await conn.execute(
        select(recipients.c.message_id, recipients.c.address, recipients.c.status)
        .where(recipients.c.message_id.in_(sorted(found)))
        .order_by(recipients.c.id)
    ):
        held[row.message_id].append({"address": row.address, "status": row.status})
    for message_id, summary in found.items():
        summary["recipients"] = held.get(message_id, [])
    return found


def _webhook(row: Any) -> WebhookRecord:
    return WebhookRecord(
        id=row.id,
        url=row.url,
        events=list(row.events),
        active=row.active,
        created_at=row.created_at,
        created_by=row.created_by,
    )
