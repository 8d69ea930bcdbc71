"""The scanner service: ``python -m services.scanner``.

Stateless workers: run as many replicas as throughput needs. Each takes a message id from the
``scan`` queue, runs every check, records the verdict with all findings, and sends clean mail on
to delivery; spam and viruses stay in quarantine.
"""

from __future__ import annotations

import asyncio
import logging

from moat import runtime
from moat.broker import Broker, Consumer, PoisonMessage
from moat.model import Action, DeliveryRequest, MessageStatus, ScanRequest
from moat.repository import SCANNABLE, Repository
from moat.services import build
from moat.settings import ScannerSettings, Settings, load_settings
from moat.spool import MessageStore
from moat.topology import DELIVER, SCAN
from services.scanner.checks import CHECKS, Check, parse, run_checks, validate_registry
from services.scanner.verdict import decide

log = logging.getLogger("scanner")

# Below this size parsing takes well under a millisecond: cheaper than a hop to a thread.
INLINE_PARSE_LIMIT = 128 * 1024


class ScanConsumer(Consumer[ScanRequest]):
    queue = SCAN
    body_type = ScanRequest

    def __init__(
        self,
        broker: Broker,
        repository: Repository,
        store: MessageStore,
        policy: ScannerSettings,
        checks: tuple[Check, ...] = CHECKS,
    ) -> None:
        super().__init__(broker, policy.prefetch)
        validate_registry(checks)
        self.repository = repository
        self.store = store
        self.policy = policy
        self.checks = checks

    async def handle(self, body: ScanRequest) -> None:
        # The common case costs no database read: scan, then store the verdict only if the
        # message has none yet. Redeliveries and oddities are sorted out afterwards.
        message_id = body.message_id
        try:
            raw = await self.store.read(message_id)
        except FileNotFoundError:
            await self._settle_unscannable(message_id)
            return
        if len(raw) > INLINE_PARSE_LIMIT:  # parsing a big message would stall acks and I/O
            message = await asyncio.to_thread(parse, message_id, raw)
        else:
            message = parse(message_id, raw)
        findings = await run_checks(self.checks, message, self.policy.check_timeout)
        verdict = decide(findings, self.policy)  # raises Undecidable: retried, never clean
        deliver = verdict.action == Action.DELIVER
        status = MessageStatus.DELIVERING if deliver else MessageStatus.QUARANTINED
        if await self.repository.record_verdict(message_id, verdict, status):
            log.info("%s %s score=%.2f -> %s", message_id, verdict.verdict, verdict.score, status)
            if deliver:
                await self.broker.publish(DELIVER, DeliveryRequest(message_id=message_id))
            return
        await self._settle_redelivery(message_id)

    async def _settle_redelivery(self, message_id: str) -> None:
        """The message already had a verdict: this is a redelivery (or a duplicate publish)."""
        record = await self.repository.get(message_id, with_history=False)
        if record is None:
            raise PoisonMessage(f"no message {message_id} in the database")
        if record.status == MessageStatus.DELIVERING:
            # The verdict was committed but the hand-off to delivery may not have been: repeat
            # it. Delivery ignores a request for an attempt already made.
            await self.broker.publish(
                DELIVER, DeliveryRequest(message_id=message_id, attempt=record.attempts)
            )
        else:
            log.info("%s is %s already; nothing to do", message_id, record.status)

    async def _settle_unscannable(self, message_id: str) -> None:
        record = await self.repository.get(message_id, with_history=False)
        if record is None:
            raise PoisonMessage(f"no message {message_id} in the database")
        if record.status in SCANNABLE:
            raise PoisonMessage(f"spool file missing for {message_id}")
        # Rejected at ingress (the sender got 451) or done with: nothing to do.
        log.info("%s is %s; not scanning it", message_id, record.status)

    async def mark_failed(self, body: ScanRequest, reason: str) -> None:
        await self.repository.mark_failed(body.message_id, "scanner", reason)


async def main(settings: Settings) -> None:
    parts = await build(settings)
    consumer = ScanConsumer(parts.broker, parts.repository, parts.store, settings.scanner)
    await consumer.start()
    log.info(
        "consuming %s with prefetch %d; checks: %s",
        SCAN,
        settings.scanner.prefetch,
        ", ".join(check.name for check in consumer.checks),
    )
    try:
        await runtime.wait_for_stop_signal()
    finally:
        await consumer.stop()
        await parts.close()


if __name__ == "__main__":
    runtime.run("scanner", load_settings(), main)
