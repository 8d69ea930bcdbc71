"""The queue topology, declared once, as data.

All queues are durable quorum queues on the default exchange (routing key = queue name):

- ``scan``: new mail waiting for a verdict (ingress -> scanner).
- ``deliver``: mail waiting for a delivery attempt (scanner, retries, DSNs -> delivery).
- ``deliver.retry.<seconds>``: one holding queue per delay of the retry schedule. Nothing
  consumes it; a message expires after its TTL and is dead-lettered back to ``deliver``.
- ``dead``: messages that failed too often (``x-delivery-limit``) or were judged poison. They
  stay here, visible; their database status is ``failed``.

Besides the queues, one fanout exchange, ``feedback.learned`` (``moat/fanout.py``): a scanner
that learned feedback tells every scanner replica, each through an exclusive queue of its own,
so all merge the new weights within a second instead of at their next poll.

Dead-lettering uses the at-least-once strategy so that a message moving between queues is never
dropped by the broker (it needs ``x-overflow: reject-publish`` on the source queue).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCAN = "scan"
DELIVER = "deliver"
DEAD = "dead"
FEEDBACK_LEARNED = "feedback.learned"  # fanout exchange: "the classifier learned something"


def retry_queue(delay_seconds: int) -> str:
    return f"{DELIVER}.retry.{delay_seconds}"


@dataclass(frozen=True)
class QueueSpec:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


def _dead_lettered_to(target: str) -> dict[str, Any]:
    return {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": target,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def topology(retry_delays: list[int], delivery_limit: int) -> list[QueueSpec]:
    """Every queue Moat uses, with its arguments."""
    quorum = {"x-queue-type": "quorum"}
    work = {**quorum, "x-delivery-limit": delivery_limit, **_dead_lettered_to(DEAD)}
    queues = [
        QueueSpec(SCAN, work),
        QueueSpec(DELIVER, work),
        QueueSpec(DEAD, quorum),
    ]
    for delay in sorted(set(retry_delays)):
        queues.append(
            QueueSpec(
                retry_queue(delay),
                {**quorum, "x-message-ttl": delay * 1000, **_dead_lettered_to(DELIVER)},
            )
        )
    return queues
