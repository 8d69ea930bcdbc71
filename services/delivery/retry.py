"""The retry schedule, as data: how long until the next attempt, and when to give up."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from moat.settings import DeliverySettings


def retry_delay(attempts_made: int, settings: DeliverySettings) -> int:
    """The base delay (seconds, one of the schedule's values, hence one retry queue) before
    the next attempt, after ``attempts_made`` attempts (>= 1)."""
    schedule = settings.retry_schedule
    return schedule[min(attempts_made, len(schedule)) - 1]


def jittered(delay: int, settings: DeliverySettings, rng: random.Random | None = None) -> float:
    """Spread retries so mail deferred together does not come back together. Only shortens
    the delay: the queue's TTL is the upper bound."""
    return delay * (1 - settings.retry_jitter * (rng or random).random())


def lifetime_exceeded(
    received_at: datetime, now: datetime, settings: DeliverySettings, next_delay: float = 0
) -> bool:
    """True when the next retry would come after the message's maximum lifetime."""
    return now + timedelta(seconds=next_delay) - received_at > timedelta(
        seconds=settings.max_lifetime
    )
