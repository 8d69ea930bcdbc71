"""The delivery worker: one attempt at one message, from claim to recorded outcome.

1. Claim the message for the attempt the request names (a lease in the database, renewed while
   the attempt runs), so a duplicate or stale request never yields a second delivery.
2. Group the recipients still to deliver by domain, resolve each domain's route, and run one
   SMTP transaction per route.
3. Judge each recipient's reply (``outcomes.judge``): delivered, deferred (retry) or bounced.
4. In one transaction: per-recipient outcomes, the message's new state, and the DSN for the
   recipients that bounced (spooled first). Then publish the DSN's delivery request and the
   message's next retry, both confirmed, and only then ack. A message that reached a state
   where its raw copy is no longer needed has its spool file removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from moat import metrics
from moat.broker import Broker, Consumer, PoisonMessage
from moat.db import db_now
from moat.lifecycle import NO_COPY_NEEDED, RECIPIENT_TO_DELIVER
from moat.model import DeliveryRequest, MessageStatus, RecipientStatus, new_message_id
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
from services.delivery.outcomes import NoReply, Reply, dsn_status, final_status, judge
from services.delivery.retry import jittered, lifetime_exceeded, retry_delay
from services.delivery.routing import NO_ROUTE_REPLY, resolve_route
from services.delivery.smtp_session import SmtpClient

log = logging.getLogger("delivery")

# The scanner's sender-authentication check reports the RFC 8601 result under this symbol.
AUTH_RESULTS_SYMBOL = "AUTH_RESULTS"


class DeliveryConsumer(Consumer[DeliveryRequest]):
    queue = DELIVER
    body_type = DeliveryRequest
    service = "delivery"

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
        keeper = asyncio.create_task(self._keep_lease(record.id, lease))
        try:
            raw = await self.store.read(record.id)
            with metrics.get().delivery_duration.time():
                await self._attempt(record, raw)
        except BaseException as exc:
            # Let the redelivered request claim the message at once instead of after the lease.
            await asyncio.shield(self.repository.release_lease(record.id))
            if isinstance(exc, FileNotFoundError):
                raise PoisonMessage(f"its spool file is missing ({record.id})") from exc
            raise
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def mark_failed(self, body: DeliveryRequest, reason: str) -> None:
        await self.repository.mark_failed(body.message_id, "delivery", reason)

    async def _keep_lease(self, message_id: str, lease: timedelta) -> None:
        """Renew the lease while the attempt runs, so that it runs out only when this process
        is gone (and the sweep then hands the message to another worker at once)."""
        while True:
            await asyncio.sleep(lease.total_seconds() / 3)
            try:
                await self.repository.renew_lease(message_id, lease)
            except Exception as exc:  # the database is away: the lease may run out; try again
                log.warning("%s: could not renew the lease: %s", message_id, exc)

    async def _attempt(self, record: MessageRecord, raw: bytes) -> None:
        settings = self.settings.delivery
        pending = [r for r in record.recipients if r.status in RECIPIENT_TO_DELIVER]
        data = self._headers(record) + raw
        by_domain: dict[str, list[str]] = defaultdict(list)
        for recipient in pending:
            by_domain[recipient.domain].append(recipient.address)

        async def deliver_domain(
            domain: str, addresses: list[str]
        ) -> dict[str, tuple[Reply, str | None]]:
            route = resolve_route(domain, self.settings)
            if route is None:
                reply = Reply(None, NO_ROUTE_REPLY.format(domain=domain), NoReply.NO_ROUTE)
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
            outcome = judge(reply, expired=expired)
            if outcome.status == RecipientStatus.BOUNCED:
                bounced.append(
                    dsn.FailedRecipient(
                        address=recipient.address,
                        status=dsn_status(outcome),
                        diagnostic=outcome.reply,
                        remote_mta=host,
                        last_attempt=now.replace(tzinfo=UTC),
                    )
                )
            outcomes.append(RecipientOutcome(recipient.id, outcome.status, outcome.reply, host))

        by_id = {o.recipient_id: o.status for o in outcomes}
        statuses = [by_id.get(r.id, r.status) for r in record.recipients]
        status = final_status(statuses)
        next_attempt_at = (
            now + timedelta(seconds=wait) if status == MessageStatus.DEFERRED else None
        )
        summary = ", ".join(f"{o.status}: {o.reply}" for o in outcomes)[:2000]

        bounce = await self._spool_dsn(record, raw, bounced, now) if bounced else None
        recorded = await self.repository.record_attempt(
            AttemptResult(record.id, outcomes, status, next_attempt_at, summary, bounce)
        )
        if not recorded:
            # The message left delivery's hands meanwhile (an administrator, a dead-letter
            # sweep); what this attempt did is in the log, and its DSN is not sent.
            log.error("%s attempt %d not recorded: %s", record.id, attempts_made, summary[:300])
            if bounce is not None:
                await self.store.delete(bounce.message_id)
            return
        log.info("%s attempt %d -> %s (%s)", record.id, attempts_made, status, summary[:300])
        metrics.get().attempted(
            status, _reply_classes(results), (now - record.received_at).total_seconds()
        )
        handoff = self.settings.broker.handoff_timeout
        if bounce is not None:
            await self.broker.publish(
                DELIVER, DeliveryRequest(message_id=bounce.message_id), timeout=handoff
            )
        if status == MessageStatus.DEFERRED:
            await self.broker.publish(
                retry_queue(delay),
                DeliveryRequest(message_id=record.id, attempt=attempts_made),
                expiration_ms=int(wait * 1000),
                timeout=handoff,
            )
        if status in NO_COPY_NEEDED and not self.settings.retention.delivered_copy:
            await self.store.delete(record.id)

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
        if record.released_at is not None:
            # Let out of quarantine by a person: the recipient's server (and the recipient)
            # can see that this mail was held and why it came through anyway.
            released = format_datetime(record.released_at.replace(tzinfo=UTC))
            lines.append(f"X-Moat-Released: {released}")
        for finding in record.findings or []:
            if finding.symbol == AUTH_RESULTS_SYMBOL and finding.detail:
                methods = " ".join(finding.detail.split()).split("; ")  # no CR/LF, one per line
                lines.append(
                    f"Authentication-Results: {self.settings.smtp.hostname};\r\n\t"
                    + ";\r\n\t".join(methods)
                )
        return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


def _reply_classes(results: dict[str, tuple[Reply, str | None]]) -> list[str]:
    return [
        metrics.reply_class(reply.code, reply.failure == NoReply.NO_ROUTE)
        for reply, _ in results.values()
    ]
