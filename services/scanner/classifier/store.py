"""The learned-feedback store: weight deltas over the shipped model, in the database.

Every learning step (``learn`` command, feedback API) runs in one transaction: it takes the
state row's lock, skips a message already learned with the same label (by digest), adds its
deltas to the per-feature totals, stamps the changed rows with a new generation and bumps the
state's generation. A replica polls the generation; when it moved, it reads the rows changed
since the generation it last saw — absolute totals, so reading one twice is harmless — and
sets them over the shipped weights. No restart, and every replica converges on the same model.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from moat.db import (
    READ_ONLY,
    classifier_deltas,
    classifier_learned,
    classifier_state,
    db_now,
)

_LINE_ENDS = re.compile(rb"\r\n|\r")
_DIGEST_HEADERS = (b"message-id", b"date", b"from", b"subject")


def message_digest(raw: bytes) -> str:
    """What identifies a message whichever way it reached us: its Message-ID, Date, From and
    Subject and its body, line endings normalised. Headers that hops add (our ``Received:``
    at ingress, a mailbox's ``Delivered-To:``) do not change it."""
    data = _LINE_ENDS.sub(b"\n", raw)
    if data.startswith(b"From "):  # an mbox separator line
        data = data.partition(b"\n")[2]
    head, _, body = data.partition(b"\n\n")
    picked: dict[bytes, bytes] = {}
    current: bytes | None = None
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and current is not None:
            picked[current] += line.strip()
            continue
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        current = name if name in _DIGEST_HEADERS and name not in picked else None
        if current is not None:
            picked[current] = value.strip()
    digest = hashlib.sha256()
    for name in _DIGEST_HEADERS:
        digest.update(name + b":" + picked.get(name, b"") + b"\n")
    digest.update(b"\n" + body.rstrip())
    return digest.hexdigest()


@dataclass(frozen=True)
class Learned:
    learned: bool  # False: this message was learned with this label before (nothing changed)
    generation: int
    previous_label: str | None = None


@dataclass(frozen=True)
class Forgotten:
    generation: int
    features: int  # deltas set back to 0
    messages: int  # learned digests dropped


class FeedbackStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.reader = engine.execution_options(**{READ_ONLY: True})

    async def poll(self, since: int) -> tuple[int, dict[int, float]]:
        """The current generation and every delta changed after ``since`` (absolute totals)."""
        async with self.reader.connect() as conn:
            generation = (
                await conn.execute(
                    select(classifier_state.c.generation).where(classifier_state.c.id == 1)
                )
            ).scalar()
            if generation is None or generation <= since:
                return since if generation is None else int(generation), {}
            rows = await conn.execute(
                select(classifier_deltas.c.feature, classifier_deltas.c.delta).where(
                    classifier_deltas.c.generation > since
                )
            )
            return int(generation), {int(f): float(d) for f, d in rows}

    async def label_of(self, digest: str) -> str | None:
        async with self.reader.connect() as conn:
            label = (
                await conn.execute(
                    select(classifier_learned.c.label).where(classifier_learned.c.digest == digest)
                )
            ).scalar()
            return None if label is None else str(label)

    async def learn(
        self,
        digest: str,
        label: str,
        deltas: dict[int, float],
        source: str,
        message_id: str | None = None,
    ) -> Learned:
        async with self.engine.begin() as conn:
            generation = await self._lock_state(conn)
            previous = (
                await conn.execute(
                    select(classifier_learned.c.label).where(classifier_learned.c.digest == digest)
                )
            ).scalar()
            if previous == label:
                return Learned(False, generation, previous)
            generation += 1
            if deltas:
                await conn.execute(
                    _upsert_deltas(conn),
                    [
                        {"feature": feature, "delta": delta, "generation": generation}
                        for feature, delta in deltas.items()
                    ],
                )
            row = {
                "digest": digest,
                "label": label,
                "generation": generation,
                "learned_at": db_now(),
                "source": source,
                "message_id": message_id,
            }
            if previous is None:
                await conn.execute(classifier_learned.insert().values(**row))
            else:
                await conn.execute(
                    update(classifier_learned)
                    .where(classifier_learned.c.digest == digest)
                    .values(**row)
                )
            await conn.execute(
                update(classifier_state)
                .where(classifier_state.c.id == 1)
                .values(generation=generation, updated_at=db_now())
            )
            return Learned(True, generation, None if previous is None else str(previous))

    async def forget(self) -> Forgotten:
        """Everything learned, undone: every delta set to 0 under a new generation (so that every
        replica, polling, goes back to the shipped weights) and every learned digest dropped (so
        the same messages can be learned again, e.g. over a new model)."""
        async with self.engine.begin() as conn:
            generation = await self._lock_state(conn) + 1
            features = await conn.execute(
                update(classifier_deltas)
                .where(classifier_deltas.c.delta != 0)
                .values(delta=0.0, generation=generation)
            )
            messages = await conn.execute(delete(classifier_learned))
            await conn.execute(
                update(classifier_state)
                .where(classifier_state.c.id == 1)
                .values(generation=generation, updated_at=db_now())
            )
            return Forgotten(generation, int(features.rowcount), int(messages.rowcount))

    async def _lock_state(self, conn: AsyncConnection) -> int:
        """The state row, locked for this transaction (created on first use)."""
        insert = _dialect_insert(conn)
        await conn.execute(
            insert(classifier_state)
            .values(id=1, generation=0, updated_at=db_now())
            .on_conflict_do_nothing(index_elements=["id"])
        )
        query = select(classifier_state.c.generation).where(classifier_state.c.id == 1)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        return int((await conn.execute(query)).scalar_one())

    async def close(self) -> None:
        await self.engine.dispose()


def _dialect_insert(conn: AsyncConnection) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


def _upsert_deltas(conn: AsyncConnection) -> Any:
    statement = _dialect_insert(conn)(classifier_deltas)
    return statement.on_conflict_do_update(
        index_elements=["feature"],
        set_={
            "delta": classifier_deltas.c.delta + statement.excluded.delta,
            "generation": statement.excluded.generation,
        },
    )
