"""How a batch writer waits for SQLite's write lock, held by another process's commit:
it takes the lock within milliseconds of its release (``moat.db._begin_immediate``), where
SQLite's own busy handler slept up to 100 ms between tries."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection

from moat.batch import Transactions
from moat.db import create_engine


def test_a_writer_gets_the_lock_soon_after_it_is_released(tmp_path: Path) -> None:
    path = tmp_path / "moat.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("CREATE TABLE t (n INTEGER)")
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    transactions = Transactions(engine)
    released = 0.0

    def hold() -> None:
        nonlocal released
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO t VALUES (1)")
        # The writer starts trying ~20 ms in. SQLite's own handler tries at 228 ms of its
        # waiting, then at 328: a release at ~240 ms was taken ~90 ms late.
        time.sleep(0.26)
        holder.execute("COMMIT")
        released = time.perf_counter()

    def write(conn: Connection) -> float:
        got = time.perf_counter()
        conn.execute(text("INSERT INTO t VALUES (2)"))
        return got

    async def main() -> float:
        thread = threading.Thread(target=hold)
        thread.start()
        await asyncio.sleep(0.02)  # the holder has the lock
        got = await transactions.run(write)
        thread.join()
        return got

    try:
        got = asyncio.run(main())
    finally:
        transactions.close()
        asyncio.run(engine.dispose())
        holder.close()
    late = got - released
    assert late < 0.04, f"took the lock {1000 * late:.0f} ms after it was released"
    assert [row[0] for row in sqlite3.connect(path).execute("SELECT n FROM t ORDER BY n")] == [
        1,
        2,
    ]


def test_a_lock_never_released_still_fails_after_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("moat.db.BUSY_TIMEOUT", 0.2)
    path = tmp_path / "moat.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("CREATE TABLE t (n INTEGER)")
    holder.execute("BEGIN IMMEDIATE")
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    transactions = Transactions(engine)
    try:
        with pytest.raises(Exception, match="locked"):
            asyncio.run(transactions.run(lambda conn: conn.execute(text("SELECT 1"))))
    finally:
        transactions.close()
        asyncio.run(engine.dispose())
        holder.close()
