"""A batch writer with a linger commits the steps that arrive within it together; without
one, a step that comes while nothing is committing is committed at once, alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Connection

from moat.batch import QUEUE_WORKER_LINGER, BatchWriter
from moat.db import create_engine


def _transactions(tmp_path: Path, linger: float) -> list[list[int]]:
    """The items of each transaction, for three steps submitted 3 ms apart."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/moat.db")
    batches: list[list[int]] = []

    def insert(conn: Connection, items: list[int]) -> list[None]:
        conn.execute(text("CREATE TABLE IF NOT EXISTS t (n INTEGER)"))
        conn.execute(text("INSERT INTO t VALUES (:n)"), [{"n": n} for n in items])
        batches.append(items)
        return [None] * len(items)

    async def run() -> None:
        writer = BatchWriter(engine, {"insert": insert}, linger=linger)
        steps = []
        for n in range(3):
            steps.append(asyncio.create_task(writer.submit("insert", n)))
            await asyncio.sleep(0.003)
        await asyncio.gather(*steps)
        writer.close()
        await engine.dispose()

    asyncio.run(run())
    return batches


def test_steps_within_the_linger_share_one_transaction(tmp_path: Path) -> None:
    assert _transactions(tmp_path, linger=0.05) == [[0, 1, 2]]


def test_without_a_linger_the_first_step_does_not_wait(tmp_path: Path) -> None:
    batches = _transactions(tmp_path, linger=0.0)
    assert batches[0] == [0]
    assert sorted(n for batch in batches for n in batch) == [0, 1, 2]


def test_queue_workers_linger_a_little() -> None:
    # Long enough to gather the steps of a few messages, short next to a scan or an attempt.
    assert 0.0 < QUEUE_WORKER_LINGER <= 0.05
