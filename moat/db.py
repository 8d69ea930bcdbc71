"""The database schema and engine. Timestamps are stored as naive UTC on every backend.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL`` and every transaction
taken with ``BEGIN IMMEDIATE``: several processes write the same file, and an immediate
transaction waits for the lock (``busy_timeout``) instead of failing on a read-to-write upgrade.
"""

from __future__ import annotations

import sqlite3
import time
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
    UniqueConstraint,
    event,
    func,
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
    # The main headers, decoded, stored by the scanner: what the API searches and shows.
    Column("subject", Text),
    Column("header_from", Text),
    Column("header_message_id", Text),
    # Set when an administrator or a recipient let it out of quarantine: delivery says so in
    # an X-Moat-Released header.
    Column("released_at", DateTime),
    Column("released_by", Text),
    # The submission user who sent it (SMTP AUTH); None: it came in unauthenticated.
    Column("submitted_by", Text),
    Index("ix_messages_status_next", "status", "next_attempt_at"),
    Index("ix_messages_received_at", "received_at"),
    Index("ix_messages_status_updated", "status", "updated_at"),
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
    # When a quarantine digest last told this recipient about this message (None: not yet).
    Column("notified_at", DateTime),
    Index("ix_recipients_address", "address"),
    Index("ix_recipients_domain", "domain"),
)
# Addresses are kept as the sender wrote them (Bob@Example.test), and a scope or a search
# matches them without case: this index serves ``lower(address) = ?`` (the API's listing).
Index("ix_recipients_address_lower", func.lower(recipients.c.address))

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
    configure_sqlite(sync, poll_for_lock=True)
    return sync


# How a batch writer waits for SQLite's write lock (``_begin_immediate``): polled at short
# intervals instead of SQLite's own busy handler, which sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25,
# 50, 50, then 100 ms between tries: a writer that found the lock held a few times in a row
# slept tens of milliseconds after it had been released. That was the database step's tail in
# the time to 250 (p99 200-700 ms against a p50 of 20-30 ms, docs/performance.md); the lock is
# held for a commit, a few milliseconds.
LOCK_POLL_FIRST = 0.0002  # seconds
LOCK_POLL_MAX = 0.002
BUSY_TIMEOUT = 30.0  # as the busy_timeout pragma: then "database is locked" is raised


def _begin_immediate(raw: sqlite3.Connection) -> None:
    deadline = time.monotonic() + BUSY_TIMEOUT
    delay = LOCK_POLL_FIRST
    raw.execute("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                # SQLITE_BUSY and its extended forms (BUSY_RECOVERY, BUSY_SNAPSHOT, ...).
                busy = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(2 * delay, LOCK_POLL_MAX)
    finally:
        # Inside the transaction SQLite's own handler again (a checkpoint, a schema change).
        raw.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")


def configure_sqlite(engine: Engine, poll_for_lock: bool = False) -> None:
    """WAL, full sync, immediate write transactions. ``poll_for_lock``: write transactions wait
    for the lock by ``_begin_immediate`` (the pysqlite engine of the batch writers)."""

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
        if poll_for_lock and not reading:
            _begin_immediate(connection.connection.driver_connection)
            return
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


# --- the REST API: tokens, audit, sender lists, release requests, webhooks, feedback ----------

# Bearer tokens the API issues. Only a hash of the secret is kept (the secret is 256 random
# bits, so a plain SHA-256 is as good as a slow hash and lets a lookup use the index).
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("name", Text, nullable=False),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),  # admin | reader | user | domain
    Column("scope", Text),  # user: the recipient address; domain: the domain
    Column("created_at", DateTime, nullable=False),
    Column("created_by", Text, nullable=False),
    Column("expires_at", DateTime),
    Column("revoked_at", DateTime),
    Column("last_used_at", DateTime),
)

# Who did what to which message, when.
audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime, nullable=False, index=True),
    Column("actor", Text, nullable=False),  # "token <name> (<id>)", "admin token", "digest link"
    Column("action", String(32), nullable=False),
    Column("message_id", String(26), index=True),
    Column("detail", Text, nullable=False, default=""),
)

# Allow and block lists: a sender (an address, or a whole domain) for one recipient, one
# protected domain, or everyone.
sender_rules = Table(
    "sender_rules",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("action", String(8), nullable=False),  # allow | block
    Column("sender", Text, nullable=False),  # "someone@example.org" or "example.org"
    Column("scope_kind", String(16), nullable=False),  # recipient | domain | global
    Column("scope", Text, nullable=False, default=""),  # the address or domain; "" for global
    Column("created_at", DateTime, nullable=False),
    Column("created_by", Text, nullable=False),
    Column("note", Text, nullable=False, default=""),
    UniqueConstraint("scope_kind", "scope", "sender", name="uq_sender_rules_scope_sender"),
)

# A recipient asks an administrator to release virus or policy quarantine.
release_requests = Table(
    "release_requests",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("message_id", String(26), ForeignKey("messages.id"), nullable=False, index=True),
    Column("recipient", Text, nullable=False),
    Column("requested_by", Text, nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("status", String(16), nullable=False),  # pending | approved | refused
    Column("created_at", DateTime, nullable=False),
    Column("decided_at", DateTime),
    Column("decided_by", Text),
)

# Webhooks: URLs that receive signed JSON events, and the outbox of events to send them.
webhooks = Table(
    "webhooks",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("url", Text, nullable=False),
    Column("secret", Text, nullable=False),  # HMAC-SHA256 key; shown once, needed to sign
    Column("events", JSON, nullable=False),  # the event names it receives
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", DateTime, nullable=False),
    Column("created_by", Text, nullable=False),
)

webhook_events = Table(
    "webhook_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("webhook_id", String(26), ForeignKey("webhooks.id"), nullable=False, index=True),
    Column("event", String(32), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("status", String(16), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime, nullable=False),
    Column("last_error", Text),
    Column("delivered_at", DateTime),
    Index("ix_webhook_events_status_next", "status", "next_attempt_at"),
)

# Where a job that follows a table has got to (the webhook dispatcher: the last ``events`` row
# it turned into webhook events). Kept in the database so a restart resumes there, and locked
# while it moves so that two replicas never handle the same rows.
cursors = Table(
    "cursors",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

# Spam/ham feedback recorded by the API (a report, a release) and learned by a scanner, which
# owns the classifier: the API never loads it.
feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(26), nullable=False, index=True),
    Column("label", String(4), nullable=False),  # spam | ham
    Column("source", String(16), nullable=False),  # api | release | link
    Column("created_at", DateTime, nullable=False),
    Column("learned_at", DateTime, index=True),
    Column("result", Text),  # learned | already | gone (no copy left) | failed: why
)

# Users of the submission listeners (SMTP AUTH) kept through the API, beside those of the
# settings (submission.users). Only an argon2 hash of the password is kept.
submission_users = Table(
    "submission_users",
    metadata,
    Column("name", String(320), primary_key=True),
    Column("password_hash", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("created_by", Text, nullable=False),
)

# One-click links (digests) work once: the nonce of each used link.
used_links = Table(
    "used_links",
    metadata,
    Column("nonce", String(32), primary_key=True),
    Column("used_at", DateTime, nullable=False),
    Column("action", String(16), nullable=False),
    Column("message_id", String(26), nullable=False),
)
