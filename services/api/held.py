"""What people see of their quarantine: the held messages a principal may see, newest first,
one page at a time, with the subject and sender they recognise. Read by the web page and the
digests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from moat.db import READ_ONLY, messages, recipients
from moat.mime import decoded
from moat.model import MessageStatus, RecipientStatus
from moat.spool import MessageStore
from services.api.auth import Principal, Role

# Enough of a spooled message to hold its header.
_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class HeldEntry:
    id: str
    received_at: datetime
    mail_from: str
    sender: str  # what a person recognises: the From header, else the envelope sender
    subject: str
    verdict: str
    score: float


def _covered(caller: Principal) -> Any:
    """The condition on ``recipients`` rows that ``caller`` may act for."""
    if caller.role == Role.USER:
        return func.lower(recipients.c.address) == caller.scope
    return recipients.c.domain == caller.scope


async def held_page(
    engine: AsyncEngine,
    store: MessageStore,
    caller: Principal,
    *,
    before: str | None = None,
    limit: int = 25,
) -> tuple[list[HeldEntry], str | None]:
    """A page of the quarantined mail ``caller`` may see (all of it for admins and readers;
    else the messages with a recipient of theirs still held), newest first, and the id to
    continue after (None on the last page)."""
    query = select(messages).where(messages.c.status == MessageStatus.QUARANTINED)
    if not caller.sees_everything:
        query = query.where(
            exists().where(
                recipients.c.message_id == messages.c.id,
                recipients.c.status == RecipientStatus.QUARANTINED,
                _covered(caller),
            )
        )
    if before:
        query = query.where(messages.c.id < before)
    query = query.order_by(messages.c.id.desc()).limit(limit + 1)
    async with engine.execution_options(**{READ_ONLY: True}).connect() as conn:
        rows = (await conn.execute(query)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    entries = await asyncio.gather(*(entry_of(store, row._mapping) for row in rows))
    return list(entries), (rows[-1].id if more and rows else None)


async def entry_of(store: MessageStore, row: Any) -> HeldEntry:
    subject, header_from = row.get("subject"), row.get("header_from")
    if subject is None and header_from is None:
        subject, header_from = await spooled_headers(store, row["id"])
    return HeldEntry(
        id=row["id"],
        received_at=row["received_at"],
        mail_from=row["mail_from"],
        sender=header_from or row["mail_from"] or "(no sender)",
        subject=subject or "(no subject)",
        verdict=row["verdict"] or "",
        score=float(row["score"] or 0.0),
    )


async def spooled_headers(store: MessageStore, message_id: str) -> tuple[str | None, str | None]:
    """Subject and From of the spooled copy, for records stored before the scanner kept
    them (or without them): read from the header only."""

    try:
        head = await store.head(message_id, _HEADER_BYTES)
    except OSError:
        return None, None

    def parse() -> tuple[str | None, str | None]:
        header = BytesHeaderParser(policy=compat32).parsebytes(head)
        subject, sender = header.get("Subject"), header.get("From")
        return (
            decoded(subject) if subject is not None else None,
            decoded(sender) if sender is not None else None,
        )

    return await asyncio.to_thread(parse)
