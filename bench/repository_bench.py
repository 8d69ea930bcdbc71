"""The database write path alone: CPU per message of the repository steps every message takes
(received, queued, verdict, claim, attempt), C messages at a time in one process so that
batches form as they do in the services. No broker, no SMTP, no scanning.

    .venv/bin/python bench/repository_bench.py [--messages N] [--concurrency C] [--database URL]

Default: a fresh SQLite file in a temporary directory. Compare two versions of the code by
running this file from two worktrees one after the other (PYTHONPATH=<worktree>).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moat.db import create_engine
from moat.migrate import upgrade
from moat.model import MessageStatus, RecipientStatus, Verdict, VerdictName, new_message_id
from moat.repository import AttemptResult, NewMessage, RecipientOutcome, Repository

CLEAN = Verdict(verdict=VerdictName.CLEAN, action="deliver", score=0.0, findings=[])


async def one_message(repository: Repository) -> None:
    message_id = new_message_id()
    new = NewMessage(message_id, "a@outside.test", ["b@example.test"], 5000, "192.0.2.1", "h")
    await repository.record_received(new)
    await repository.mark_queued([message_id])
    await repository.record_verdict(message_id, CLEAN, MessageStatus.DELIVERING)
    record = await repository.claim_for_delivery(message_id, 0, timedelta(seconds=60))
    if record is None:
        raise RuntimeError(f"{message_id} could not be claimed")
    outcome = RecipientOutcome(record.recipients[0].id, RecipientStatus.DELIVERED, "250 2.0.0 Ok")
    await repository.record_attempt(
        AttemptResult(message_id, [outcome], MessageStatus.DELIVERED, None, "delivered")
    )


async def run(url: str, messages: int, concurrency: int) -> None:
    repository = Repository(create_engine(url))
    try:
        for _ in range(20):  # warm-up: compiled statement caches, connections
            await one_message(repository)
        slots = asyncio.Semaphore(concurrency)

        async def guarded() -> None:
            async with slots:
                await one_message(repository)

        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        await asyncio.gather(*(guarded() for _ in range(messages)))
        after, elapsed = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
    finally:
        await repository.close()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(
        f"repository write path, {messages} messages, concurrency {concurrency}: "
        f"{messages / elapsed:.0f} msgs/s, CPU {1000 * cpu / messages:.3f} ms/msg"
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/repository_bench.py")
    parser.add_argument("--messages", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--database", help="a database URL; default: a new SQLite file")
    args = parser.parse_args()
    url = args.database or f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/bench.db"
    upgrade(url)  # alembic runs its own event loop: before ours
    asyncio.run(run(url, args.messages, args.concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
