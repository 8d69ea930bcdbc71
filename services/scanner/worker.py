"""The scanner's queue worker: one message id from ``scan`` in, a verdict recorded, clean
mail handed on to ``deliver``."""

from __future__ import annotations

import logging
import time

from moat import metrics
from moat.broker import Broker, Consumer, PoisonMessage
from moat.lifecycle import SCANNABLE
from moat.mime import main_headers
from moat.model import Action, DeliveryRequest, MessageEnvelope, MessageStatus, ScanRequest
from moat.repository import Repository
from moat.spool import MessageStore
from moat.topology import DELIVER, SCAN
from services.scanner.scanning import Scanner

log = logging.getLogger("scanner")


class ScanConsumer(Consumer[ScanRequest]):
    queue = SCAN
    body_type = ScanRequest
    service = "scanner"

    def __init__(
        self, broker: Broker, repository: Repository, store: MessageStore, scanner: Scanner
    ) -> None:
        super().__init__(broker, scanner.settings.scanner.prefetch)
        self.repository = repository
        self.store = store
        self.scanner = scanner

    async def handle(self, body: ScanRequest) -> None:
        # The common case costs no database read: the envelope travels in the request; scan,
        # then store the verdict only if the message has none yet. Redeliveries and oddities
        # are sorted out afterwards.
        message_id = body.message_id
        started = time.perf_counter()
        try:
            raw = await self.store.read(message_id)
        except FileNotFoundError:
            await self._settle_unscannable(message_id)
            return
        envelope = body.envelope or await self._envelope(message_id)
        result = await self.scanner.scan(message_id, raw, envelope)
        verdict = self.scanner.judge(result)  # raises Undecidable: retried, never clean
        deliver = verdict.action == Action.DELIVER
        status = MessageStatus.DELIVERING if deliver else MessageStatus.QUARANTINED
        # The main headers of the parse the checks used (a few dictionary reads, no second
        # parse), stored with the verdict for the API to search and show.
        headers = main_headers(result.message.message)
        if await self.repository.record_verdict(message_id, verdict, status, headers):
            log.info("%s %s score=%.2f -> %s", message_id, verdict.verdict, verdict.score, status)
            metrics.get().judged(verdict.verdict, verdict.action, time.perf_counter() - started)
            if deliver:
                await self.broker.publish(
                    DELIVER,
                    DeliveryRequest(message_id=message_id),
                    timeout=self.scanner.settings.broker.handoff_timeout,
                )
            return
        await self._settle_redelivery(message_id)

    async def mark_failed(self, body: ScanRequest, reason: str) -> None:
        await self.repository.mark_failed(body.message_id, "scanner", reason)

    async def _envelope(self, message_id: str) -> MessageEnvelope:
        record = await self.repository.get(message_id, with_history=False)
        if record is None:
            raise PoisonMessage(f"no message {message_id} in the database")
        return MessageEnvelope(
            mail_from=record.mail_from,
            rcpt_tos=tuple(r.address for r in record.recipients),
            client_address=record.client_address,
            helo=record.helo,
        )

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
            raise PoisonMessage(f"its spool file is missing ({message_id})")
        # Rejected at ingress (the sender got 451) or done with: nothing to do.
        log.info("%s is %s; not scanning it", message_id, record.status)
