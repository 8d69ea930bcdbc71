"""The delivery worker: one attempt at one message, from claim to recorded outcome.

1. Claim the message for the attempt the request names (a lease in the database), so a
   duplicate or stale request never yields a second delivery.
2. Group the recipients still pending by domain, resolve each domain's route, and run one SMTP
   transaction per route.
3. Classify each recipient's reply: delivered, deferred (retry) or bounced.
4. In one transaction: per-recipient outcomes, the message's new state, and the DSN for the
   recipients that bounced (spooled first). Then publish the DSN's delivery request and the
   message's next retry, both confirmed, and only then ack.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from moat.broker import Broker, Consumer, PoisonMessage
from moat.db import db_now
from moat.model import (
    RECIPIENT_DONE,
    DeliveryRequest,
    MessageStatus,
    RecipientStatus,
    new_message_id,
)
from moat.repository import (
    AttemptResult,
    MessageRecord,
    NewMessage,
    RecipientOutcome,
    Repository,
)
from moat.settings import Settings
from moat.spool import MessageStore
from moat.topology import DELIVER, retry_queue
from services.delivery import dsn
from services.delivery.retry import jittered, lifetime_exceeded, retry_delay
from services.delivery.routing import NO_ROUTE_REPLY, resolve_route
from services.delivery.smtp_session import Reply, SmtpClient, classify

log = logging.getLogger("delivery")

# The scanner's sender-authentication check reports the RFC 8601 result under this symbol.
AUTH_RESULTS_SYMBOL = "AUTH_RESULTS"


def final_status(statuses: Sequence[RecipientStatus]) -> MessageStatus:
    """The message's state from its recipients' states."""
    if any(status not in RECIPIENT_DONE for status in statuses):
        return MessageStatus.DEFERRED
    if all(status == RecipientStatus.DELIVERED for status in statuses):
        return MessageStatus.DELIVERED
    if all(status == RecipientStatus.BOUNCED for status in statuses):
        return MessageStatus.BOUNCED
    return MessageStatus.PARTIALLY_DELIVERED


class DeliveryConsumer(Consumer[DeliveryRequest]):
    queue = DELIVER
    body_type = DeliveryRequest

    def __init__(
        self,
        broker: Broker,
        repository: Repository,
        store: MessageStore,
        settings: Settings,
        smtp: SmtpClient,
    ) -> None:
        super().__init__(broker, settings.delivery.prefetch)
        self.repository = repository
        self.store = store
        self.settings = settings
        self.smtp = smtp

    async def handle(self, body: DeliveryRequest) -> None:
        lease = timedelta(seconds=self.settings.delivery.lease_seconds)
        record = await self.repository.claim_for_delivery(body.message_id, body.attempt, lease)
        if record is None:
            log.debug("%s attempt %d: already made or in progress", body.message_id, body.attempt)
            return
        try:
            raw = await self.store.read(record.id)
            await self._attempt(record, raw)
        except BaseException as exc:
            # Let the redelivered request claim the message at once instead of after the lease.
            await asyncio.shield(self.repository.release_lease(record.id))
            if isinstance(exc, FileNotFoundError):
                raise PoisonMessage(f"spool file missing for {record.id}") from exc
            raise

    async def mark_failed(self, body: DeliveryRequest, reason: str) -> None:
        await self.repository.mark_failed(body.message_id, "delivery", reason)

    async def _attempt(self, record: MessageRecord, raw: bytes) -> None:
        settings = self.settings.delivery
        pending = [r for r in record.recipients if r.status not in RECIPIENT_DONE]
        data = self._headers(record) + raw
        by_domain: dict[str, list[str]] = defaultdict(list)
        for recipient in pending:
            by_domain[recipient.domain].append(recipient.address)

        async def deliver_domain(
            domain: str, addresses: list[str]
        ) -> dict[str, tuple[Reply, str | None]]:
            route = resolve_route(domain, self.settings)
            if route is None:
                reply = Reply(None, NO_ROUTE_REPLY.format(domain=domain))
                return {address: (reply, None) for address in addresses}
            replies = await self.smtp.send(
                route, record.mail_from, addresses, data, smtp_utf8=record.smtp_utf8
            )
            return {address: (reply, route.host) for address, reply in replies.items()}

        results: dict[str, tuple[Reply, str | None]] = {}
        for part in await asyncio.gather(*(deliver_domain(d, a) for d, a in by_domain.items())):
            results.update(part)

        now = db_now()
        attempts_made = record.attempts + 1
        delay = retry_delay(attempts_made, settings)
        wait = jittered(delay, settings)
        expired = lifetime_exceeded(record.received_at, now, settings, wait)
        outcomes: list[RecipientOutcome] = []
        bounced: list[dsn.FailedRecipient] = []
        for recipient in pending:
            reply, host = results[recipient.address]
            outcome = classify(reply)
            text = str(reply)
            if outcome == RecipientStatus.DEFERRED and expired:
                outcome = RecipientStatus.BOUNCED
                text = f"message lifetime exceeded; last reply: {reply}"
            if outcome == RecipientStatus.BOUNCED:
                code = dsn.enhanced_status(reply.code, reply.text)
                if reply.code is None or not 500 <= reply.code < 600:
                    code = "4.4.7" if expired else code  # RFC 3463: delivery time expired
                bounced.append(
                    dsn.FailedRecipient(
                        address=recipient.address,
                        status=_permanent(code),
                        diagnostic=text,
                        remote_mta=host,
                        last_attempt=now.replace(tzinfo=UTC),
                    )
                )
            outcomes.append(RecipientOutcome(recipient.id, outcome, text, host))

        by_id = {o.recipient_id: o.status for o in outcomes}
        statuses = [by_id.get(r.id, r.status) for r in record.recipients]
        status = final_status(statuses)
        next_attempt_at = (
            now + timedelta(seconds=wait) if status == MessageStatus.DEFERRED else None
        )
        summary = ", ".join(f"{o.status}: {o.reply}" for o in outcomes)[:2000]

        bounce = await self._spool_dsn(record, raw, bounced, now) if bounced else None
        await self.repository.record_attempt(
            AttemptResult(record.id, outcomes, status, next_attempt_at, summary, bounce)
        )
        log.info("%s attempt %d -> %s (%s)", record.id, attempts_made, status, summary[:300])
        if bounce is not None:
            await self.broker.publish(DELIVER, DeliveryRequest(message_id=bounce.message_id))
        if status == MessageStatus.DEFERRED:
            await self.broker.publish(
                retry_queue(delay),
                DeliveryRequest(message_id=record.id, attempt=attempts_made),
                expiration_ms=int(wait * 1000),
            )

    async def _spool_dsn(
        self, record: MessageRecord, raw: bytes, bounced: list[dsn.FailedRecipient], now: datetime
    ) -> NewMessage | None:
        """Write the DSN for these recipients, unless the message is itself a bounce or came
        from the null sender: a bounce never bounces (no loops, no backscatter)."""
        if not record.mail_from or record.bounce_of is not None:
            log.info("%s: no DSN for a message from the null sender", record.id)
            return None
        dsn_id = new_message_id()
        data = dsn.build_dsn(
            reporting_mta=self.settings.smtp.hostname,
            dsn_message_id=dsn_id,
            original_message_id=record.id,
            original_mail_from=record.mail_from,
            arrival=record.received_at.replace(tzinfo=UTC),
            recipients=bounced,
            original=raw,
        )
        await self.store.write(dsn_id, data)
        return NewMessage(
            message_id=dsn_id,
            mail_from="",
            rcpt_tos=[record.mail_from],
            size=len(data),
            smtp_utf8=record.smtp_utf8,
        )

    def _headers(self, record: MessageRecord) -> bytes:
        """What we prepend to mail we deliver: the verdict summary and, when the scanner
        authenticated the sender, ``Authentication-Results`` (RFC 8601). Our own DSNs carry
        none. Ingress removed any such fields a sender forged."""
        if record.verdict is None:
            return b""
        lines = [
            f"X-Moat-Verdict: {record.verdict}",
            f"X-Moat-Score: {record.score or 0:.2f}",
        ]
        for finding in record.findings or []:
            if finding.symbol == AUTH_RESULTS_SYMBOL and finding.detail:
                methods = " ".join(finding.detail.split()).split("; ")  # no CR/LF, one per line
                lines.append(
                    f"Authentication-Results: {self.settings.smtp.hostname};\r\n\t"
                    + ";\r\n\t".join(methods)
                )
        return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


def _permanent(code: str) -> str:
    """A DSN reports a failure: its status class is 5 even when the last reply was a 4xx."""
    return "5" + code[1:] if code.startswith("4") else code
