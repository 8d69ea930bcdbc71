"""The delivery service: ``python -m services.delivery``.

Consumes the ``deliver`` queue, and every ``delivery.sweep_interval`` republishes mail whose
next attempt is overdue and unclaimed (its request was lost to a crash between commit and
publish, or the worker holding it died), so no message waits forever. It also runs the
dead-letter sweep and, every ``retention.interval``, retention (``moat/retention.py``).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from moat import metrics, probes, runtime
from moat.batch import QUEUE_WORKER_LINGER
from moat.dead_letters import DeadLetterSweep
from moat.model import DeliveryRequest
from moat.retention import Retention
from moat.services import build, every
from moat.settings import Settings, load_settings
from moat.topology import DELIVER
from services.delivery.smtp_session import SmtpClient
from services.delivery.worker import DeliveryConsumer

log = logging.getLogger("delivery")


async def main(settings: Settings) -> None:
    probe = await probes.serve("delivery", settings, settings.delivery.metrics_port)
    parts = await build(settings, commit_linger=QUEUE_WORKER_LINGER)
    smtp = SmtpClient(
        settings.smtp.hostname, settings.delivery.connect_timeout, settings.delivery.command_timeout
    )
    consumer = DeliveryConsumer(parts.broker, parts.repository, parts.store, settings, smtp)
    dead_letters = DeadLetterSweep(parts.broker, parts.repository)
    retention = Retention(parts.repository, parts.store, settings)
    leftovers = await asyncio.to_thread(
        parts.store.sweep_temporary, settings.retention.orphan_grace
    )
    if leftovers:
        log.warning("removed %d temporary spool file(s) of interrupted writes", leftovers)

    async def retain() -> None:
        await retention.run_once()

    async def republish_overdue() -> None:
        grace = timedelta(seconds=settings.delivery.sweep_grace)
        for message_id, attempt in await parts.repository.overdue_for_delivery(grace):
            log.warning(
                "republishing overdue %s (attempt %d)",
                message_id,
                attempt,
                extra={"queue_id": message_id},
            )
            metrics.get().job_did("overdue_sweep", "republished", 1)
            await parts.broker.publish(
                DELIVER, DeliveryRequest(message_id=message_id, attempt=attempt)
            )

    await consumer.start()
    probe.readiness = probes.consumer_ready(parts.broker, DELIVER)
    background = [
        asyncio.create_task(
            every(settings.delivery.sweep_interval, republish_overdue, "overdue sweep")
        ),
        asyncio.create_task(every(smtp.idle_seconds, smtp.expire_idle, "SMTP cache expiry")),
        asyncio.create_task(
            every(settings.delivery.sweep_interval, dead_letters.run_once, "dead-letter sweep")
        ),
        asyncio.create_task(every(settings.retention.interval, retain, "retention")),
    ]
    log.info("consuming %s with prefetch %d", DELIVER, settings.delivery.prefetch)
    try:
        await runtime.wait_for_stop_signal()
    finally:
        await consumer.stop(settings.shutdown_timeout)
        for task in background:
            task.cancel()
        await smtp.close()
        await parts.close()
        await probe.close()


READS = """\
reads: delivery.* (retry schedule, lifetime, smarthost, timeouts, sweeps), domains.<name>.relay
(where each protected domain's mail goes), smtp.hostname (our name in EHLO and DSNs),
retention.* (purging held mail, removing old records, spool clean-up), database_url, spool_dir,
broker.*, shutdown_timeout, log_level, env.
connects to: the database, RabbitMQ, and the next hops over SMTP."""


if __name__ == "__main__":
    runtime.service_parser("delivery", __doc__, READS).parse_args()
    runtime.run("delivery", load_settings(), main)
