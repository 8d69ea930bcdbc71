"""``GET /v1/stats``: what the gateway did over a time window, and what waits in its queues.
For admins and readers."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from moat.db import db_now
from moat.model import MessageStatus, VerdictName
from services.api.deps import BrokerDep, RepositoryDep, StaffDep
from services.api.models import IsoDateTime, UtcDateTime, as_naive_utc

log = logging.getLogger("api")

router = APIRouter(prefix="/v1/stats", tags=["stats"])


class MessageCounts(BaseModel):
    total: int = Field(description="messages received in the window")
    by_status: dict[str, int] = Field(description="each status, with 0 for those none is in")
    by_verdict: dict[str, int] = Field(description="each verdict; unscanned mail has none")


class QueueStats(BaseModel):
    name: str
    messages: int = Field(description="messages ready in the queue")
    consumers: int


class BrokerStats(BaseModel):
    reachable: bool
    detail: str = Field(description="why the queues are not shown, when the broker is down")
    queues: list[QueueStats]


class Stats(BaseModel):
    since: UtcDateTime
    until: UtcDateTime
    messages: MessageCounts
    broker: BrokerStats


@router.get("", response_model=Stats)
async def stats(
    caller: StaffDep,
    repository: RepositoryDep,
    broker: BrokerDep,
    since: Annotated[
        IsoDateTime | None,
        Query(description="start of the window (ISO 8601); default: 24 hours ago"),
    ] = None,
) -> Stats:
    """Counts per status and per verdict of the messages received since ``since``, and the
    depth and consumers of each queue. A broker that cannot be reached is said so in
    ``broker`` (``reachable: false``); the counts are still given."""
    until = db_now()
    start = as_naive_utc(since) if since is not None else until - timedelta(hours=24)
    statuses, verdicts = await repository.counts_since(start)
    try:
        queues = [
            QueueStats(name=n, messages=m, consumers=c) for n, m, c in await broker.queue_stats()
        ]
        broker_stats = BrokerStats(reachable=True, detail="", queues=queues)
    except Exception as exc:  # not connected, timed out, connection lost, queue missing
        log.info("stats: broker unreachable: %s", type(exc).__name__)
        broker_stats = BrokerStats(
            reachable=False, detail="the broker is unreachable; queue figures unknown", queues=[]
        )
    return Stats(
        since=start,
        until=until,
        messages=MessageCounts(
            total=sum(statuses.values()),
            by_status={s.value: statuses.get(s.value, 0) for s in MessageStatus},
            by_verdict={v.value: verdicts.get(v.value, 0) for v in VerdictName},
        ),
        broker=broker_stats,
    )
