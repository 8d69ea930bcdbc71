"""Batched writes: many small write steps from one process become one transaction of bulk
statements.

Each service process works on dozens of messages at once, and each message's step is a small
write (insert a message, record a verdict, claim a delivery). Done one by one, each costs a
transaction (a commit, an fsync, and on SQLite a turn at the lock all processes share) and a few
statements, and the per-statement cost of the async drivers dominates the whole pipeline.

Here a step waits only while the previous batch commits; then every step that queued up
meanwhile goes into one transaction, where the steps of each kind run as a few bulk statements.
At low load a batch holds one step, so nothing waits longer than before. If a batch fails, its
steps are retried one by one, so a bad step fails alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from moat.db import create_sqlite_sync_engine

T = TypeVar("T")

# A bulk handler does every step of one kind in the batch: items in, one result per item out.
# Handlers are plain (synchronous) SQLAlchemy code: see ``Transactions``.
BulkHandler = Callable[[Connection, list[Any]], list[Any]]


class Transactions:
    """Runs a plain function in a database transaction. On PostgreSQL that is the async
    engine (``run_sync``: asyncpg underneath); on SQLite the function runs in a worker thread on
    a pysqlite connection, one hop per transaction instead of several per statement."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sqlite = (
            create_sqlite_sync_engine(engine) if engine.url.get_backend_name() == "sqlite" else None
        )

    async def run(self, work: Callable[[Connection], T]) -> T:
        if self._sqlite is not None:
            return await asyncio.to_thread(self._run_sqlite, work)
        async with self.engine.begin() as conn:
            return await conn.run_sync(work)

    def _run_sqlite(self, work: Callable[[Connection], T]) -> T:
        assert self._sqlite is not None
        with self._sqlite.begin() as conn:
            return work(conn)

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.dispose()


# The linger of the queue workers' writers (scanner, delivery): each step waits up to 10 ms
# more for its commit, and batches hold about twice as many steps (docs/performance.md).
QUEUE_WORKER_LINGER = 0.01


class BatchWriter:
    """``linger``: seconds a batch waits for more steps before it commits (0: it commits as
    soon as the previous commit is done). A transaction costs about as much CPU as five of
    its steps (its commit, the hop to the database thread and back), so a writer whose
    callers can wait a little (the scanner's and delivery's, behind a queue; never ingress's,
    whose sender waits for the 250) commits fewer, larger batches (docs/performance.md)."""

    def __init__(
        self,
        engine: AsyncEngine,
        handlers: Mapping[str, BulkHandler],
        max_items: int = 256,
        linger: float = 0.0,
    ) -> None:
        self.engine = engine
        self.transactions = Transactions(engine)
        self.handlers = handlers
        self.max_items = max_items
        self.linger = linger
        self._pending: list[tuple[str, Any, asyncio.Future[Any]]] = []
        self._committer: asyncio.Task[None] | None = None

    async def submit(self, kind: str, item: Any) -> Any:
        """Do one step of ``kind``; return its result once its transaction is committed."""
        if kind not in self.handlers:
            raise KeyError(kind)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((kind, item, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_all())
        return await future

    async def _commit_all(self) -> None:
        while self._pending:
            if self.linger and len(self._pending) < self.max_items:
                await asyncio.sleep(self.linger)
            batch = self._pending[: self.max_items]
            del self._pending[: self.max_items]
            try:
                results = await self._commit(batch)
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch[0][2], error=exc)
                    continue
                for step in batch:  # find the culprit; the others go through
                    try:
                        [result] = await self._commit([step])
                    except Exception as step_exc:
                        _settle(step[2], error=step_exc)
                    else:
                        _settle(step[2], result)
                continue
            for (_, _, future), result in zip(batch, results, strict=True):
                _settle(future, result)

    async def _commit(self, batch: list[tuple[str, Any, asyncio.Future[Any]]]) -> list[Any]:
        """One transaction: the steps grouped by kind (in order of first arrival)."""
        by_kind: dict[str, list[int]] = {}
        for index, (kind, _, _) in enumerate(batch):
            by_kind.setdefault(kind, []).append(index)

        def work(conn: Connection) -> list[Any]:
            results: list[Any] = [None] * len(batch)
            for kind, indexes in by_kind.items():
                outcome = self.handlers[kind](conn, [batch[i][1] for i in indexes])
                for index, result in zip(indexes, outcome, strict=True):
                    results[index] = result
            return results

        return await self.transactions.run(work)

    def close(self) -> None:
        self.transactions.close()


def _settle(
    future: asyncio.Future[Any], result: Any = None, error: Exception | None = None
) -> None:
    if future.done():  # the waiter gave up (cancelled); the work is committed all the same
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
