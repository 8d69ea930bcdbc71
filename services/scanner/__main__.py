"""The scanner: ``python -m services.scanner`` runs the service; ``python -m services.scanner
check|learn|forget ...`` are the offline commands (``cli.py``; ``check --help`` for each).

Stateless workers: run as many replicas as throughput needs. Each takes a message id from the
``scan`` queue, runs every check, records the verdict with all findings, and sends clean mail on
to delivery; spam and viruses stay in quarantine.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from sqlalchemy.ext.asyncio import AsyncEngine

from moat import probes, runtime
from moat.batch import QUEUE_WORKER_LINGER
from moat.feedback import FeedbackQueue
from moat.services import build, every
from moat.settings import Settings, load_settings
from moat.spool import MessageStore
from moat.topology import SCAN
from services.scanner import cli
from services.scanner.checks.classifier import ClassifierCheck
from services.scanner.feedback import FeedbackLearner, LearnedBroadcast
from services.scanner.scanning import Scanner
from services.scanner.worker import ScanConsumer

log = logging.getLogger("scanner")


async def main(settings: Settings) -> None:
    scanner = Scanner(settings)  # builds the checks: a bad registry fails before connecting
    probe = await probes.serve("scanner", settings, settings.scanner.metrics_port)
    parts = await build(settings, commit_linger=QUEUE_WORKER_LINGER)
    consumer = ScanConsumer(parts.broker, parts.repository, parts.store, scanner)
    await consumer.start()
    probe.readiness = probes.consumer_ready(parts.broker, SCAN)
    log.info(
        "consuming %s with prefetch %d; checks: %s",
        SCAN,
        settings.scanner.prefetch,
        ", ".join(check.name for check in scanner.checks),
    )
    learning = _learn_feedback(settings, scanner, parts.repository.engine, parts.store)
    try:
        await runtime.wait_for_stop_signal()
    finally:
        if learning is not None:
            learning[0].cancel()
            await learning[1].close()
        await consumer.stop(settings.shutdown_timeout)
        await parts.close()
        await probe.close()


def _learn_feedback(
    settings: Settings, scanner: Scanner, engine: AsyncEngine, store: MessageStore
) -> tuple[asyncio.Task[None], LearnedBroadcast] | None:
    """The loop that learns the feedback the API records (services/scanner/feedback.py), with
    the classifier of this scanner's check, and the broadcast that brings what any replica
    learned to this one at once; none when the classifier reads no database."""
    section = settings.scanner.classifier
    check = next((c for c in scanner.checks if isinstance(c, ClassifierCheck)), None)
    if check is None or check.classifier.store is None or section.poll_interval <= 0:
        log.warning("not learning feedback: the classifier has no database to learn into")
        return None
    broadcast = LearnedBroadcast(settings.broker.url.get_secret_value(), check.classifier)
    broadcast.start()
    learner = FeedbackLearner(FeedbackQueue(engine), store, check.classifier, broadcast.learned)

    async def learn() -> None:
        await learner.run_once()

    task = asyncio.create_task(every(section.feedback_interval, learn, "feedback learning"))
    return task, broadcast


READS = """\
reads: scanner.* (checks, thresholds, actions, engines), domains (each domain's scanner
overrides), dns.*, database_url (learned classifier feedback), spool_dir, broker.*, log_level.
connects to: the database, RabbitMQ, clamd when scanner.clamav is enabled, and DNS for the
auth and blocklist checks. The offline commands connect to nothing but the database (learn,
forget) and DNS (check)."""


if __name__ == "__main__":
    parser = runtime.service_parser("scanner", __doc__, READS)
    cli.add_commands(parser, required=False)
    args = parser.parse_args()
    if args.command is not None:
        sys.exit(cli.run(load_settings(), args))
    runtime.run("scanner", load_settings(), main)
