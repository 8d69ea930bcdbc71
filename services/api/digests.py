"""Quarantine digests: each recipient with newly held mail gets one message listing it, with
one-click links (release, delete, block the sender; and a sign-in link to see everything).

"New" is a held recipient row whose ``notified_at`` is still empty. One transaction picks the
rows (locked, skipping rows another replica holds: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
SQLite's ``BEGIN IMMEDIATE`` locks the whole database), marks them notified, and records the
digest mail itself, already spooled: so two replicas, or the periodic job and the admin
endpoint at once, never tell a recipient about the same message twice, and a crash before the
commit leaves the rows to tell next time. Delivery takes the digests from there like any mail
(a notice from the null sender: ``moat/notices.py``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from moat.broker import Broker, PublishError
from moat.db import db_now, messages, recipients
from moat.model import DeliveryRequest, MessageStatus, RecipientStatus, new_message_id
from moat.notices import compose
from moat.repository import NewMessage, Repository
from moat.services import log_failure
from moat.settings import Settings
from moat.spool import MessageStore
from moat.topology import DELIVER
from services.api.held import HeldEntry, entry_of
from services.api.links import Action, Links
from services.api.quarantine import ADMIN_ONLY_RELEASE

log = logging.getLogger("api")


@dataclass(frozen=True)
class DigestEntry:
    entry: HeldEntry
    release: str | None  # None: only an administrator releases this verdict
    delete: str
    block: str | None  # None: no envelope sender to block (the null sender)


@dataclass
class DigestRun:
    digests: int = 0  # mails queued, one per recipient
    entries: int = 0  # held messages told about
    notice_ids: list[str] = field(default_factory=list)


def next_run(now: float, interval: float, offset: float) -> float:
    """The first multiple of ``interval`` (shifted by ``offset``) since the epoch after ``now``:
    daily with offset 25200 is 07:00 UTC every day, however often the API restarts."""
    return (math.floor((now - offset) / interval) + 1) * interval + offset


class Digests:
    def __init__(
        self,
        repository: Repository,
        store: MessageStore,
        broker: Broker,
        links: Links,
        templates: Environment,
        settings: Settings,
    ) -> None:
        self.repository = repository
        self.store = store
        self.broker = broker
        self.links = links
        self.templates = templates
        self.settings = settings

    async def run(self) -> DigestRun:
        """Send every recipient with newly held mail one digest; returns what was sent."""
        done = DigestRun()
        while True:
            batch = await self._batch()
            if not batch:
                break
            done.digests += len(batch)
            done.entries += sum(count for _, count in batch)
            done.notice_ids += [notice_id for notice_id, _ in batch]
            for notice_id, _ in batch:
                try:
                    await self.broker.publish(DELIVER, DeliveryRequest(message_id=notice_id))
                except PublishError as exc:  # recorded: the delivery sweep sends it on
                    log.warning("digest %s recorded, not yet published: %s", notice_id, exc)
        if done.digests:
            log.info("digests: %d sent, telling of %d held message(s)", done.digests, done.entries)
        return done

    async def _batch(self) -> list[tuple[str, int]]:
        """One transaction: pick up to ``batch_size`` recipients with new held mail, mark
        their rows notified, record one digest each. Returns (digest id, entries) per digest;
        empty when there is nothing (left) to tell, or another replica holds it."""
        new = (
            recipients.c.status == RecipientStatus.QUARANTINED,
            recipients.c.notified_at.is_(None),
            messages.c.status == MessageStatus.QUARANTINED,
        )
        address = func.lower(recipients.c.address)
        async with self.repository.engine.begin() as conn:
            addresses = (
                await conn.execute(
                    select(address)
                    .select_from(recipients.join(messages))
                    .where(*new)
                    .group_by(address)
                    .order_by(address)
                    .limit(self.settings.digest.batch_size)
                )
            ).scalars()
            wanted = list(addresses)
            if not wanted:
                return []
            claimed = (
                await conn.execute(
                    select(
                        recipients.c.id.label("recipient_row"), address.label("address"), messages
                    )
                    .select_from(recipients.join(messages))
                    .where(*new, address.in_(wanted))
                    .order_by(messages.c.id.desc())
                    .with_for_update(of=recipients, skip_locked=True)
                )
            ).all()
            if not claimed:
                return []  # another replica is telling these right now
            await conn.execute(
                update(recipients)
                .where(recipients.c.id.in_([row.recipient_row for row in claimed]))
                .values(notified_at=db_now())
            )
            by_address: dict[str, list[Any]] = defaultdict(list)
            for row in claimed:
                by_address[row.address].append(row._mapping)
            return await self._record(conn, by_address)

    async def _record(
        self, conn: AsyncConnection, by_address: dict[str, list[Any]]
    ) -> list[tuple[str, int]]:
        news, sent = [], []
        for address, rows in by_address.items():
            entries = await asyncio.gather(*(entry_of(self.store, row) for row in rows))
            text, html = self.render(address, list(entries))
            count = len(entries)
            subject = (
                f"Quarantine: {count} new message{'s' if count != 1 else ''} held for {address}"
            )
            data = compose(self.settings.smtp.hostname, address, subject, text, html)
            notice_id = new_message_id()
            await self.store.write(notice_id, data)
            news.append(
                NewMessage(notice_id, "", [address], len(data), smtp_utf8=not address.isascii())
            )
            sent.append((notice_id, count))
        await conn.run_sync(lambda sync: self.repository.notices_in(sync, news, "api"))
        return sent

    def render(self, address: str, entries: list[HeldEntry]) -> tuple[str, str]:
        """The digest's plain text and HTML for one recipient."""
        ttl = self.settings.digest.link_ttl
        shown = entries[: self.settings.digest.max_entries]
        items = [
            DigestEntry(
                entry,
                release=None
                if entry.verdict in ADMIN_ONLY_RELEASE
                else self._url(Action.RELEASE, entry.id, address, ttl),
                delete=self._url(Action.DELETE, entry.id, address, ttl),
                block=self._url(Action.BLOCK, entry.id, address, ttl) if entry.mail_from else None,
            )
            for entry in shown
        ]
        context = {
            "address": address,
            "items": items,
            "more": len(entries) - len(shown),
            "signin": self._url(Action.SIGNIN, "", address, ttl),
            "expires": datetime.fromtimestamp(time.time() + ttl, UTC).strftime(
                "%Y-%m-%d %H:%M UTC"
            ),
        }
        text = self.templates.get_template("digest.txt").render(context)
        html = self.templates.get_template("digest.html").render(context)
        return text, html

    def _url(self, action: Action, message_id: str, address: str, ttl: float) -> str:
        return self.links.url(self.links.make(action, message_id, address, ttl))

    async def periodic(self) -> None:
        """Run at every multiple of ``digest.interval`` (plus ``offset``) since the epoch."""
        interval, offset = self.settings.digest.interval, self.settings.digest.offset
        while True:
            now = time.time()
            await asyncio.sleep(next_run(now, interval, offset) - now)
            try:
                await self.run()
            except Exception as exc:
                log_failure(
                    log, "the digest run failed; the next one tells what this one did not", exc
                )
