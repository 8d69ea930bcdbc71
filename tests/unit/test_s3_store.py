"""The S3 message store against a real S3-compatible server on loopback (moto, its own
process): the same promises as the directory store, the outage path, and retention on it."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from moat.db import create_engine, db_now, messages
from moat.migrate import upgrade
from moat.model import Action, Verdict, VerdictName
from moat.model import MessageStatus as M
from moat.repository import NewMessage, Repository
from moat.retention import Retention
from moat.s3store import S3Store
from moat.services import is_outage
from moat.settings import S3Settings, Settings
from moat.spool import DirectoryStore, MessageStore, StoreUnavailable, open_store
from tests.support.s3 import S3Server

ONE = "01S3STORE00000000000000001"
TWO = "01S3STORE0000000000000000Z"
DAY = 86400.0


def _store(server: S3Server, bucket: str, **more: object) -> S3Store:
    settings = Settings(store=server.settings(bucket, **more))
    store = open_store(settings)
    assert isinstance(store, S3Store)
    return store


def test_the_backend_is_chosen_by_settings(s3_server: S3Server, tmp_path: Path) -> None:
    assert isinstance(open_store(Settings(spool_dir=tmp_path)), DirectoryStore)
    assert isinstance(_store(s3_server, s3_server.new_bucket()), S3Store)
    with pytest.raises(ValueError, match="bucket"):
        open_store(Settings(store={"backend": "s3"}))


def test_secret_is_not_shown(s3_server: S3Server) -> None:
    settings = Settings(store=s3_server.settings("b"))
    assert "moat-test-secret" not in repr(settings)
    assert "moat-test-secret" not in str(settings.model_dump())


def test_round_trip(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    store: MessageStore = _store(s3_server, bucket, prefix="mail/")
    big = b"Subject: big\r\n\r\n" + b"x" * 3_000_000

    async def scenario() -> None:
        await store.write(ONE, b"Subject: one\r\n\r\nbody\r\n")
        await store.write(TWO, big)
        # Durable means stored on the server when write returns: another client, another
        # connection, sees the whole object at once.
        objects = s3_server.keys(bucket)
        assert objects == {
            "mail/01/01S3STORE00000000000000001.eml": b"Subject: one\r\n\r\nbody\r\n",
            "mail/0z/01S3STORE0000000000000000Z.eml": big,
        }
        assert await store.read(TWO) == big
        assert await store.head(ONE, 8) == b"Subject:"
        copy = await store.open(TWO)
        assert copy.size == len(big)
        assert b"".join([chunk async for chunk in copy.chunks()]) == big
        assert await (await store.open(ONE)).read_all() == b"Subject: one\r\n\r\nbody\r\n"
        assert await store.exists(ONE)
        listed = dict(await asyncio.to_thread(lambda: list(store.stored())))
        assert set(listed) == {ONE, TWO}
        assert all(abs(written - time.time()) < 120 for written in listed.values())

        await store.delete(ONE)
        await store.delete(ONE)  # twice: no error
        assert not await store.exists(ONE)
        for missing in (store.read(ONE), store.head(ONE, 10), store.open(ONE)):
            with pytest.raises(FileNotFoundError):
                await missing
        assert set(s3_server.keys(bucket)) == {"mail/0z/01S3STORE0000000000000000Z.eml"}
        with pytest.raises(ValueError):
            await store.write("../escape", b"x")
        assert store.sweep_temporary(0) == 0
        # Ingress's free-space rule never refuses mail for a bucket.
        assert store.free_bytes() - 10**9 >= Settings().spool_free_minimum

    asyncio.run(scenario())


def test_a_bucket_shared_with_other_data(s3_server: S3Server) -> None:
    """Only our prefix is ours: objects beside it are neither listed nor removed."""
    bucket = s3_server.new_bucket()
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="other/01OTHER000000000000000000.eml", Body=b"x")
    client.put_object(Bucket=bucket, Key="spool/ab/notes.txt", Body=b"x")
    store = _store(s3_server, bucket)
    asyncio.run(store.write(ONE, b"x"))
    assert [message_id for message_id, _ in store.stored()] == [ONE]


def test_create_bucket(s3_server: S3Server) -> None:
    bucket = "moat-created-" + str(time.time_ns())
    store = _store(s3_server, bucket, create_bucket=True)
    asyncio.run(store.write(ONE, b"x"))
    assert list(s3_server.keys(bucket)) == ["spool/01/01S3STORE00000000000000001.eml"]
    _store(s3_server, bucket, create_bucket=True)  # there already: fine


def test_a_store_that_cannot_be_reached_is_an_outage(s3_server: S3Server) -> None:
    from tests.harness import free_port

    store = S3Store(
        S3Settings(
            bucket="b",
            endpoint_url=f"http://127.0.0.1:{free_port()}",  # nobody listens
            access_key_id="x",
            secret_access_key="y",
            max_attempts=1,
            connect_timeout=1,
        )
    )
    missing_bucket = _store(s3_server, "no-such-bucket-here")

    async def scenario() -> None:
        for failing in (store.write(ONE, b"x"), missing_bucket.write(ONE, b"x")):
            with pytest.raises(StoreUnavailable) as caught:
                await failing
            assert isinstance(caught.value, OSError) and is_outage(caught.value)
        with pytest.raises(StoreUnavailable):
            list(store.stored())

    asyncio.run(scenario())


def test_retention_on_s3(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    store = _store(s3_server, bucket)
    url = f"sqlite+aiosqlite:///{tmp_path / 'moat.db'}"
    upgrade(url)
    repository = Repository(create_engine(url))
    old, fresh, delivered = (
        "01S3OLDSPAM000000000000000",
        "01S3NEWSPAM000000000000000",
        "01S3DONE000000000000000000",
    )
    orphan = "01S3ORPHAN0000000000000000"
    spam = Verdict(verdict=VerdictName.SPAM, action=Action.QUARANTINE, score=9, findings=[])

    async def message(message_id: str, status: M, days_old: float) -> None:
        await repository.record_received(NewMessage(message_id, "a@x.test", ["b@x.test"], 10))
        await store.write(message_id, b"Subject: x\r\n\r\nx\r\n")
        if status == M.QUARANTINED:
            assert await repository.record_verdict(message_id, spam, M.QUARANTINED)
        then = db_now() - timedelta(days=days_old)
        async with repository.engine.begin() as conn:
            await conn.execute(
                update(messages)
                .where(messages.c.id == message_id)
                .values(status=status, received_at=then, updated_at=then)
            )

    def ids() -> set[str]:
        return {key.rpartition("/")[2].removesuffix(".eml") for key in s3_server.keys(bucket)}

    async def scenario() -> None:
        try:
            await message(old, M.QUARANTINED, 31)
            await message(fresh, M.QUARANTINED, 1)
            await message(delivered, M.DELIVERED, 0)
            await store.write(orphan, b"x")
            settings = Settings(retention={"quarantine": 30 * DAY, "orphan_grace": 3600})
            done = await Retention(repository, store, settings).run_once()
            assert (done.purged, done.files) == (1, 1)
            assert ids() == {fresh, orphan}  # the orphan is young: it may be a write in flight
            record = await repository.get(old)
            assert record is not None and record.status == M.PURGED

            settings = Settings(retention={"quarantine": 30 * DAY, "orphan_grace": 0.001})
            done = await Retention(repository, store, settings).run_once()
            assert done.files == 1
            assert ids() == {fresh}
        finally:
            await repository.close()

    asyncio.run(scenario())


def test_the_store_is_configured_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # As compose and the Kubernetes Secret give it: the secret never in a file.
    monkeypatch.setenv("MOAT_STORE__BACKEND", "s3")
    monkeypatch.setenv("MOAT_STORE__S3__BUCKET", "from-env")
    monkeypatch.setenv("MOAT_STORE__S3__SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("MOAT_STORE__S3__CREATE_BUCKET", "true")
    store = Settings().store
    assert (store.backend, store.s3.bucket, store.s3.create_bucket) == ("s3", "from-env", True)
    assert store.s3.secret_access_key is not None
    assert store.s3.secret_access_key.get_secret_value() == "s3cr3t"
