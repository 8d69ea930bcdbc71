"""The database schema and engine. Timestamps are stored as naive UTC on every backend.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL`` and every transaction
taken with ``BEGIN IMMEDIATE``: several processes write the same file, and an immediate
transaction waits for the lock (``busy_timeout``) instead of failing on a read-to-write upgrade.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
)
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

metadata = MetaData()

# Execution option marking a connection that only reads (see ``Repository.reader``).
READ_ONLY = "moat_read_only"

messages = Table(
    "messages",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("status", String(24), nullable=False),
    Column("mail_from", Text, nullable=False),  # "" is the null sender
    Column("client_address", String(64), nullable=False, default=""),
    Column("helo", Text, nullable=False, default=""),
    Column("size", Integer, nullable=False),
    Column("smtp_utf8", Boolean, nullable=False, default=False),
    Column("received_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("verdict", String(16)),
    Column("score", Float),
    Column("findings", JSON),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime),
    Column("lease_until", DateTime),
    Column("bounce_of", String(26)),  # set on a DSN we generated: the message it reports on
    Column("reason", Text),  # why it failed, was rejected or is deferred
    Index("ix_messages_status_next", "status", "next_attempt_at"),
)

recipients = Table(
    "recipients",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(26), ForeignKey("messages.id"), nullable=False, index=True),
    Column("address", Text, nullable=False),
    Column("domain", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("remote_host", Text),
    Column("reply", Text),  # the last reply from the remote server, or why none came
    Column("updated_at", DateTime, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(26), ForeignKey("messages.id"), nullable=False, index=True),
    Column("at", DateTime, nullable=False),
    Column("service", String(16), nullable=False),
    Column("event", String(32), nullable=False),
    Column("detail", Text, nullable=False, default=""),
)


def db_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def create_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)

    if parsed.database and parsed.database != ":memory:":
        from pathlib import Path

        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 30})
    configure_sqlite(engine.sync_engine)
    return engine


def create_sqlite_sync_engine(engine: AsyncEngine) -> Engine:
    """A plain (pysqlite) engine on the same SQLite file as ``engine``, for work done in one
    worker thread: a whole batch costs one hop to the thread, where aiosqlite costs several
    per statement."""
    sync = create_sync_engine(
        engine.url.set(drivername="sqlite"),
        connect_args={"timeout": 30, "check_same_thread": False},
    )
    configure_sqlite(sync)
    return sync


def configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        # Reads (WAL: they never block writers) start deferred; writes take the lock at once.
        reading = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")


# --- the spam classifier's learned feedback (services/scanner/classifier/store.py) -------------

# One row: the generation, bumped by every learning step; replicas poll it.
classifier_state = Table(
    "classifier_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1
    Column("generation", Integer, nullable=False, default=0),
    Column("updated_at", DateTime, nullable=False),
)

# Learned weight deltas over the shipped model, per hashed feature; ``generation`` is the
# generation that last changed the row, so a replica fetches only what changed since its poll.
classifier_deltas = Table(
    "classifier_deltas",
    metadata,
    Column("feature", Integer, primary_key=True, autoincrement=False),
    Column("delta", Float, nullable=False),
    Column("generation", Integer, nullable=False, index=True),
)

# Every message learned, by digest: learning the same message again with the same label is a
# no-op; with the other label it is learned again (a correction).
classifier_learned = Table(
    "classifier_learned",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("label", String(4), nullable=False),  # spam | ham
    Column("generation", Integer, nullable=False),
    Column("learned_at", DateTime, nullable=False),
    Column("source", String(16), nullable=False),  # cli | api
    Column("message_id", String(26)),  # the spooled message, when learned through the API
)
