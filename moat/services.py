"""What every service builds in its ``main``: the repository, the store and the broker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from moat.broker import Broker
from moat.db import create_engine
from moat.repository import Repository
from moat.settings import Settings
from moat.spool import MessageStore
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


async def build(settings: Settings, *, connect_broker: bool = True) -> Components:
    repository = Repository(create_engine(settings.database_url))
    store = MessageStore(settings.spool_dir)
    broker = Broker(
        settings.broker, topology(settings.delivery.retry_schedule, settings.broker.delivery_limit)
    )
    if connect_broker:
        await broker.connect()
    return Components(settings, repository, store, broker)


async def every(interval: float, job: Callable[[], Awaitable[None]], name: str) -> None:
    """Run ``job`` forever, ``interval`` seconds apart; a failing run is logged, not fatal."""
    while True:
        await asyncio.sleep(interval)
        try:
            await job()
        except Exception:
            log.exception("%s failed; will try again in %.0fs", name, interval)
