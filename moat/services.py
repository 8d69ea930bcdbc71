"""What every service builds in its ``main``: the repository, the store and the broker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from moat import metrics
from moat.broker import Broker
from moat.db import create_engine
from moat.repository import Repository
from moat.settings import Settings
from moat.spool import MessageStore, open_store
from moat.topology import topology

log = logging.getLogger(__name__)


@dataclass
class Components:
    settings: Settings
    repository: Repository
    store: MessageStore
    broker: Broker

    async def close(self) -> None:
        await self.broker.close()
        await self.repository.close()


async def build(
    settings: Settings, *, connect_broker: bool = True, commit_linger: float = 0.0
) -> Components:
    """``commit_linger``: how long the process's database writes wait to be batched with
    others (``moat.batch.BatchWriter``); 0 where a sender or a user waits for them."""
    repository = Repository(create_engine(settings.database_url), commit_linger)
    store = open_store(settings)
    broker = Broker(
        settings.broker, topology(settings.delivery.retry_schedule, settings.broker.delivery_limit)
    )
    metrics.get().broker_connected.set_function(lambda: broker.connected)
    if connect_broker:
        await broker.connect()
    return Components(settings, repository, store, broker)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says a dependency is away (the database, the broker, the network), not
    that our code is wrong: worth a line in the log, not a traceback."""
    import sqlite3

    import asyncpg.exceptions as pg
    from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

    from moat.broker import PublishError

    outages = (
        OperationalError,
        InterfaceError,
        DisconnectionError,
        PublishError,
        OSError,
        sqlite3.OperationalError,
        # asyncpg raises these as they are while a pool connects (SQLAlchemy wraps the rest).
        pg.InterfaceError,
        pg.PostgresConnectionError,
        pg.InvalidCatalogNameError,
        pg.CannotConnectNowError,
        pg.OperatorInterventionError,
        pg.InvalidAuthorizationSpecificationError,
    )
    if isinstance(exc, outages):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def log_failure(logger: logging.Logger, what: str, exc: Exception) -> None:
    """A background job's failure: one line for an outage, the traceback for anything else."""
    if is_outage(exc):
        cause = getattr(exc, "orig", None) or exc
        logger.warning("%s: %s: %s", what, type(cause).__name__, cause)
    else:
        logger.error(what, exc_info=exc)


async def every(interval: float, job: Callable[[], Awaitable[None]], name: str) -> None:
    """Run ``job`` forever, ``interval`` seconds apart; a failing run is logged, not fatal."""
    runs = metrics.get().job_runs
    while True:
        await asyncio.sleep(interval)
        try:
            await job()
        except Exception as exc:
            runs.labels(metrics.job_label(name), "error").inc()
            log_failure(log, f"{name} failed; will try again in {interval:.0f}s", exc)
        else:
            runs.labels(metrics.job_label(name), "ok").inc()
