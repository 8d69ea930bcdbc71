"""``/healthz`` (the process answers), ``/readyz`` (it can do its work: the database and the
broker are reachable) and ``/metrics`` (Prometheus). None needs a token: orchestrators and
scrapers call them, and none shows anything about a message."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from moat import metrics as moat_metrics
from moat.broker import Broker
from moat.model import MessageStatus
from services.api.deps import BrokerDep, RepositoryDep, SettingsDep
from services.api.middleware import ApiMetrics
from services.api.problems import problem_responses, unavailable

log = logging.getLogger("api")

router = APIRouter(tags=["health"])

DATABASE_TIMEOUT = 3.0  # seconds: an answer slower than this is no answer for a probe


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    database: Literal["ok"]
    broker: Literal["ok"]


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up and answers (a liveness probe): nothing else is asked."""
    return Health(status="ok")


async def database_reachable(repository: RepositoryDep) -> bool:
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT):
            async with repository.reader.connect() as conn:
                await conn.execute(text("SELECT 1"))
    except Exception as exc:
        log.info("readiness: database unreachable: %s", type(exc).__name__)
        return False
    return True


@router.get("/readyz", response_model=Readiness, responses=problem_responses(503))
async def readyz(repository: RepositoryDep, broker: BrokerDep) -> Readiness | Response:
    """Ready to serve (a readiness probe): the database answers and the broker connection is
    up; 503 otherwise, naming which is not."""
    database = await database_reachable(repository)
    if database and broker.connected:
        return Readiness(status="ready", database="ok", broker="ok")
    down = [name for name, up in (("database", database), ("broker", broker.connected)) if not up]
    return unavailable(f"not ready: {' and '.join(down)} unreachable")


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(
    request: Request, repository: RepositoryDep, broker: BrokerDep, settings: SettingsDep
) -> Response:
    """Prometheus text format: requests by route and status, request latency, messages by
    status, and each queue's depth and consumers (read at most every
    ``api.metrics_cache_seconds``; while the database or the broker is unreachable the last
    figures stay)."""
    state: ApiMetrics = request.app.state.metrics
    if time.monotonic() - state.messages_read_at >= settings.api.metrics_cache_seconds:
        try:
            async with asyncio.timeout(DATABASE_TIMEOUT):
                counts = await repository.count_by_status()
        except Exception as exc:
            log.info("metrics: cannot count messages: %s", type(exc).__name__)
        else:
            state.set_messages(counts, [status.value for status in MessageStatus])
        await _read_queues(broker)
    shared = moat_metrics.get().registry.restricted_registry(API_SHARED_METRICS)
    return Response(
        generate_latest(state.registry) + generate_latest(shared), media_type=CONTENT_TYPE_LATEST
    )


# What the API serves of moat/metrics.py besides its own: the queues (one reader for the whole
# gateway, not one per scanner replica), its broker connection and its background jobs.
API_SHARED_METRICS = [
    "moat_queue_messages",
    "moat_queue_consumers",
    "moat_broker_connected",
    "moat_job_runs_total",
    "moat_job_items_total",
]


async def _read_queues(broker: Broker) -> None:
    """Depth and consumers of every queue, by passive declares; while the broker is away the
    last figures stay (``moat_broker_connected`` says so)."""
    try:
        stats = await broker.queue_stats()
    except Exception as exc:
        log.info("metrics: cannot read the queues: %s", type(exc).__name__)
        return
    shared = moat_metrics.get()
    for queue, ready, consumers in stats:
        shared.queue_messages.labels(queue).set(ready)
        shared.queue_consumers.labels(queue).set(consumers)
