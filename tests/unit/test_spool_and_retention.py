"""The spool's housekeeping and the retention pass, on a real directory and a real SQLite
database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from moat import spool
from moat.db import create_engine, db_now, messages
from moat.migrate import upgrade
from moat.model import Action, Verdict, VerdictName
from moat.model import MessageStatus as M
from moat.model import RecipientStatus as R
from moat.repository import NewMessage, Repository
from moat.retention import Retention
from moat.settings import Settings
from moat.spool import _HOST, DirectoryStore

DAY = 86400.0


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    asyncio.run(store.write("01TESTWRITE000000000000000", b"x\r\n"))
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [
        "01TESTWRITE000000000000000.eml"
    ]
    assert [message_id for message_id, _ in store.stored()] == ["01TESTWRITE000000000000000"]


@pytest.mark.parametrize("size", [0, 5 * 1024, spool.INLINE_READ_LIMIT + 1])
def test_read_gives_the_whole_copy_and_leaves_its_access_time(tmp_path: Path, size: int) -> None:
    store = DirectoryStore(tmp_path)
    data = os.urandom(size)
    asyncio.run(store.write("01READ", data))
    path = store.path("01READ")
    # Two days ago: under relatime (the usual mount) a plain read would update it now.
    before = time.time() - 2 * DAY
    os.utime(path, (before, path.stat().st_mtime))
    assert asyncio.run(store.read("01READ")) == data
    assert path.stat().st_atime == pytest.approx(before, abs=1)


def test_read_and_delete_of_a_missing_copy(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    with pytest.raises(FileNotFoundError):
        asyncio.run(store.read("01GONE"))
    asyncio.run(store.write("01GONE", b"x"))
    asyncio.run(store.delete("01GONE"))
    asyncio.run(store.delete("01GONE"))  # a second time: no error
    assert not store.path("01GONE").exists()


def test_sweep_temporary_takes_leftovers_only(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    directory = tmp_path / "0a"
    directory.mkdir()
    dead = directory / f"01A.tmp-{_HOST}-{_dead_pid()}"  # this host, writer gone
    alive = directory / f"01B.tmp-{_HOST}-{os.getpid()}"  # this process: in progress
    elsewhere = directory / "01C.tmp-otherhost-123"  # another host, recent: may be writing
    stale = directory / "01D.tmp-otherhost-456"  # another host, old: nobody writes that long
    legacy = directory / "01E.tmp4242"  # the old naming, old
    for path in (dead, alive, elsewhere, stale, legacy):
        path.write_bytes(b"partial")
    _age(stale, 2 * 3600)
    _age(legacy, 2 * 3600)
    kept_message = directory / "01F.eml"
    kept_message.write_bytes(b"whole")
    _age(kept_message, 10 * DAY)

    assert store.sweep_temporary(older_than=3600) == 3
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [alive.name, elsewhere.name, kept_message.name]
    )


def test_free_bytes_is_the_file_systems(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "spool")
    stat = os.statvfs(tmp_path)
    assert abs(store.free_bytes() - stat.f_bavail * stat.f_frsize) < 64 * 1024 * 1024


def test_free_space_minimum_defaults_to_one_and_a_half_messages() -> None:
    assert Settings(smtp={"max_message_size": 1000}).spool_free_minimum == 1500
    assert Settings(spool_min_free=7).spool_free_minimum == 7


# --- retention ------------------------------------------------------------------------------


class World:
    """A database and a spool with messages of every kind, aged as a test needs."""

    def __init__(self, tmp_path: Path) -> None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'moat.db'}"
        upgrade(url)
        self.repository = Repository(create_engine(url))
        self.store = DirectoryStore(tmp_path / "spool")

    async def message(self, message_id: str, status: M, *, days_old: float) -> None:
        """A message in ``status``, received and last changed ``days_old`` days ago."""
        await self.repository.record_received(
            NewMessage(message_id, "a@x.test", ["b@example.test"], 10)
        )
        await self.store.write(message_id, b"Subject: x\r\n\r\nx\r\n")
        if status == M.QUARANTINED:  # the real way, so its recipients are held too
            assert await self.repository.record_verdict(message_id, _spam(), M.QUARANTINED)
        then = db_now() - timedelta(days=days_old)
        async with self.repository.engine.begin() as conn:
            await conn.execute(
                update(messages)
                .where(messages.c.id == message_id)
                .values(status=status, received_at=then, updated_at=then)
            )

    def has_file(self, message_id: str) -> bool:
        return self.store.path(message_id).exists()


def _spam() -> Verdict:
    return Verdict(verdict=VerdictName.SPAM, action=Action.QUARANTINE, score=9, findings=[])


def test_a_retention_pass(tmp_path: Path) -> None:
    world = World(tmp_path)
    settings = Settings(retention={"quarantine": 30 * DAY, "records": 60 * DAY, "batch_size": 2})

    async def scenario() -> None:
        try:
            await world.message("01OLDSPAM00000000000000000", M.QUARANTINED, days_old=31)
            await world.message("01OLDSPAM00000000000000001", M.QUARANTINED, days_old=40)
            await world.message("01OLDSPAM00000000000000002", M.QUARANTINED, days_old=45)
            await world.message("01NEWSPAM00000000000000000", M.QUARANTINED, days_old=1)
            await world.message("01OLDFAILED000000000000000", M.FAILED, days_old=31)
            await world.message("01OLDDONE00000000000000000", M.DELIVERED, days_old=61)
            await world.message("01RECENTDONE00000000000000", M.DELIVERED, days_old=2)
            await world.message("01INFLIGHT0000000000000000", M.DEFERRED, days_old=3)
            orphan_old, orphan_new = "01ORPHANOLD000000000000000", "01ORPHANNEW000000000000000"
            await world.store.write(orphan_old, b"x")
            await world.store.write(orphan_new, b"x")
            _age(world.store.path(orphan_old), 2 * 3600)

            done = await Retention(world.repository, world.store, settings).run_once()

            for message_id in (
                "01OLDSPAM00000000000000000",
                "01OLDSPAM00000000000000001",
                "01OLDSPAM00000000000000002",
                "01OLDFAILED000000000000000",
            ):
                record = await world.repository.get(message_id)
                assert record is not None and record.status == M.PURGED, message_id
                assert not world.has_file(message_id)
                assert record.events[-1].event == "purged"
            spam = await world.repository.get("01OLDSPAM00000000000000000")
            assert spam is not None and {r.status for r in spam.recipients} == {R.PURGED}
            fresh = await world.repository.get("01NEWSPAM00000000000000000")
            assert fresh is not None and fresh.status == M.QUARANTINED
            assert world.has_file("01NEWSPAM00000000000000000")
            # Finished long ago: gone from the database, timeline and all.
            assert await world.repository.get("01OLDDONE00000000000000000") is None
            # Finished recently: the record stays, its copy (not needed) goes.
            assert await world.repository.get("01RECENTDONE00000000000000") is not None
            assert not world.has_file("01RECENTDONE00000000000000")
            # Still being delivered: untouched.
            assert world.has_file("01INFLIGHT0000000000000000")
            # A file with no record: gone once old enough.
            assert not world.has_file(orphan_old)
            assert world.has_file(orphan_new)
            assert (done.purged, done.removed) == (4, 1)
            assert done.files == 2  # the recent delivered copy and the old orphan

            again = await Retention(world.repository, world.store, settings).run_once()
            assert (again.purged, again.removed, again.files) == (0, 0, 0)
        finally:
            await world.repository.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("keep", [0.0, 3600.0])
def test_delivered_copy_kept_as_configured(tmp_path: Path, keep: float) -> None:
    world = World(tmp_path)
    settings = Settings(retention={"delivered_copy": keep})

    async def scenario() -> None:
        try:
            await world.message("01DONE00000000000000000000", M.DELIVERED, days_old=0)
            await Retention(world.repository, world.store, settings).run_once()
            assert world.has_file("01DONE00000000000000000000") is bool(keep)
        finally:
            await world.repository.close()

    asyncio.run(scenario())


def test_records_with_release_requests_are_removed_with_them(tmp_path: Path) -> None:
    # A release request refers to its message (a foreign key): removing the message alone
    # failed on every pass, and the record stayed for ever.
    world = World(tmp_path)
    settings = Settings(retention={"records": 30 * DAY})
    message_id = "01ASKED0000000000000000000"

    async def scenario() -> None:
        try:
            await world.message(message_id, M.QUARANTINED, days_old=40)
            made, _ = await world.repository.request_release(
                message_id, ["b@example.test"], "user token 'b'", "mine"
            )
            assert len(made) == 1
            async with world.repository.engine.begin() as conn:
                await conn.execute(
                    update(messages).where(messages.c.id == message_id).values(status=M.DELETED)
                )
            done = await Retention(world.repository, world.store, settings).run_once()
            assert done.removed == 1
            assert await world.repository.get(message_id) is None
            assert await world.repository.release_requests(message_id=message_id) == []
        finally:
            await world.repository.close()

    asyncio.run(scenario())


def test_background_jobs_log_an_outage_in_one_line_and_a_bug_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from moat.services import is_outage, log_failure

    logger = logging.getLogger("test.jobs")
    outage = OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked"))
    assert is_outage(outage) and is_outage(ConnectionRefusedError(111, "refused"))
    assert not is_outage(KeyError("bug"))
    with caplog.at_level(logging.WARNING, logger="test.jobs"):
        log_failure(logger, "sweep failed", outage)
        log_failure(logger, "sweep failed", KeyError("bug"))
    [first, second] = caplog.records
    assert first.levelname == "WARNING" and first.exc_info is None
    assert "database is locked" in first.getMessage()
    assert second.levelname == "ERROR" and second.exc_info is not None


def test_writes_in_flight_fsync_together_and_each_lands_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal group-commits fsyncs that run at once, so 24 writes in flight must have
    their fsyncs in flight together (the default executor allowed 6 on 2 cores), and every
    file lands whole under its own name with no temporary left."""
    store = DirectoryStore(tmp_path)
    real_fsync = os.fsync
    running = 0
    most = 0
    lock = threading.Lock()

    def slow_fsync(fd: int) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.05)  # a slow disk: the others arrive meanwhile
            real_fsync(fd)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(spool.os, "fsync", slow_fsync)
    ids = [f"01TESTGROUP{n:013d}" for n in range(24)]

    async def write_all() -> None:
        await asyncio.gather(*(store.write(i, i.encode() * 100) for i in ids))

    asyncio.run(write_all())
    assert most >= 20, most
    for message_id in ids:
        assert store.path(message_id).read_bytes() == message_id.encode() * 100
    assert not list(tmp_path.rglob("*.tmp*"))
    assert sorted(i for i, _ in store.stored()) == ids


def test_a_failed_write_fails_alone_and_leaves_nothing(tmp_path: Path) -> None:
    """Among writes in flight together, one whose directory cannot be made fails with its
    OSError; the others succeed."""
    store = DirectoryStore(tmp_path)
    blocked = "01TESTFAILS00000000000000zz"
    (tmp_path / "zz").write_bytes(b"a file where its directory should be")
    good = [f"01TESTFINE{n:014d}" for n in range(5)]

    async def write_all() -> list[BaseException | None]:
        return await asyncio.gather(
            store.write(blocked, b"lost"),
            *(store.write(i, b"kept") for i in good),
            return_exceptions=True,
        )

    results = asyncio.run(write_all())
    assert isinstance(results[0], OSError)
    assert results[1:] == [None] * len(good)
    assert all(store.path(i).read_bytes() == b"kept" for i in good)
    assert not list(tmp_path.rglob("*.tmp*"))


def test_a_write_is_answered_only_after_its_directory_is_flushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The promise's order: data fsynced before the rename, the directory fsynced after it,
    and the caller answered only then."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    target = tmp_path / "ab" / "01TESTORDER0000000000000ab.eml"

    def fsync(fd: int) -> None:
        real_fsync(fd)
        kind = "dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"
        events.append(f"fsync {kind}")

    def replace(src: object, dst: object) -> None:
        real_replace(src, dst)  # type: ignore[arg-type]
        events.append("rename")

    monkeypatch.setattr(spool.os, "fsync", fsync)
    monkeypatch.setattr(spool.os, "replace", replace)
    store = DirectoryStore(tmp_path)

    async def write() -> None:
        await store.write("01TESTORDER0000000000000ab", b"x")
        events.append("answered")

    asyncio.run(write())
    assert target.read_bytes() == b"x"
    assert events == ["fsync file", "rename", "fsync dir", "answered"]
