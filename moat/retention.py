"""Retention: what Moat keeps, and for how long (the ``retention`` settings).

One pass, run by the delivery service every ``retention.interval``:

1. quarantined and failed mail older than ``retention.quarantine`` is purged: the record moves
   to ``purged`` (the lifecycle allows it from those states only) and then its raw copy goes;
2. records of finished mail (``lifecycle.TERMINAL``) unchanged for ``retention.records`` are
   removed from the database, timeline and recipients included;
3. the spool is reconciled with the database: a file whose message no longer needs it (a crash
   between recording an outcome and removing the file, or a delivered copy kept for
   ``retention.delivered_copy``) is removed, and so is a file with no record at all once it is
   ``retention.orphan_grace`` old (a crash between spooling and recording);
4. temporary files of interrupted writes are removed.

Everything goes in batches of ``retention.batch_size``, each its own short transaction, so a
pass never holds up the mail flowing past it. The database changes before the file does: a
crash in between leaves a file for the next pass, never a record without its copy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from itertools import islice

from moat import lifecycle, metrics
from moat.db import db_now
from moat.model import MessageStatus
from moat.repository import Repository
from moat.settings import Settings
from moat.spool import MessageStore

log = logging.getLogger(__name__)


@dataclass
class RetentionPass:
    purged: int = 0  # quarantined or failed mail whose raw copy was removed
    removed: int = 0  # records of finished mail taken out of the database
    files: int = 0  # spool files no message needed
    temporary: int = 0  # leftovers of interrupted writes

    def __str__(self) -> str:
        return (
            f"purged {self.purged} held message(s), removed {self.removed} finished record(s), "
            f"{self.files} unneeded spool file(s), {self.temporary} temporary file(s)"
        )


class Retention:
    def __init__(self, repository: Repository, store: MessageStore, settings: Settings) -> None:
        self.repository = repository
        self.store = store
        self.settings = settings.retention

    async def run_once(self) -> RetentionPass:
        started = time.monotonic()
        done = RetentionPass()
        done.purged = await self._purge_held()
        done.removed = await self._remove_records()
        done.files = await self._reconcile_spool()
        done.temporary = await asyncio.to_thread(
            self.store.sweep_temporary, self.settings.orphan_grace
        )
        for kind, count in vars(done).items():
            metrics.get().job_did("retention", kind, count)
        if done.purged or done.removed or done.files or done.temporary:
            log.info("retention: %s in %.1fs", done, time.monotonic() - started)
        return done

    async def _purge_held(self) -> int:
        purged = 0
        held = lifecycle.sources(MessageStatus.PURGED)
        age = timedelta(seconds=self.settings.quarantine)
        while ids := await self.repository.older_than(
            held, age, self.settings.batch_size, by="received"
        ):
            moved = await asyncio.gather(
                *(
                    self.repository.transition(
                        message_id,
                        MessageStatus.PURGED,
                        "retention",
                        "purged",
                        f"held longer than {_days(self.settings.quarantine)}",
                    )
                    for message_id in ids
                )
            )
            for message_id, ok in zip(ids, moved, strict=True):
                if ok:
                    await self.store.delete(message_id)
            purged += sum(moved)
            if not any(moved):
                break  # moved on meanwhile; the next pass sees them again
            if len(ids) == self.settings.batch_size:
                log.info("retention: %d held message(s) purged so far", purged)
        return purged

    async def _remove_records(self) -> int:
        removed = 0
        age = timedelta(seconds=self.settings.records)
        while ids := await self.repository.older_than(
            lifecycle.TERMINAL, age, self.settings.batch_size
        ):
            count = await self.repository.remove_records(ids)
            for message_id in ids:
                await self.store.delete(message_id)  # normally gone long ago
            removed += count
            if not count:
                break
            if len(ids) == self.settings.batch_size:
                log.info("retention: %d finished record(s) removed so far", removed)
        return removed

    async def _reconcile_spool(self) -> int:
        removed = 0
        now, wall = db_now(), time.time()
        keep_copy = timedelta(seconds=self.settings.delivered_copy)
        files = iter(await asyncio.to_thread(lambda: list(self.store.stored())))
        while batch := dict(islice(files, self.settings.batch_size)):
            states = await self.repository.states_of(list(batch))
            for message_id, written in batch.items():
                state = states.get(message_id)
                if state is None:
                    unneeded = wall - written > self.settings.orphan_grace
                else:
                    status, changed = state
                    unneeded = status in lifecycle.NO_COPY_NEEDED and now - changed >= keep_copy
                if unneeded:
                    await self.store.delete(message_id)
                    removed += 1
        return removed


def _days(seconds: float) -> str:
    days = seconds / 86400
    return f"{days:g} days" if days >= 1 else f"{seconds:g} seconds"
