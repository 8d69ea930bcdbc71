"""Every query Moat runs, one method per step of a message's life.

Write steps go through a ``BatchWriter``: concurrent steps of a process share one transaction and
run as bulk statements. Every change of state is one the lifecycle table (``moat/lifecycle.py``)
allows from the state the row is in: the rows are locked, checked against the table, and the
``UPDATE`` itself is conditional on the allowed source states. A step that may be repeated after
a crash (redelivery) therefore changes nothing the second time and reports so, and a late event
can never overwrite a state that moved on; a refused transition is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, TypeAdapter
from sqlalchemy import (
    Select,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from moat import lifecycle
from moat.batch import BatchWriter
from moat.db import (
    READ_ONLY,
    db_now,
    events,
    feedback,
    messages,
    recipients,
    release_requests,
)
from moat.lifecycle import DELIVERABLE, RECIPIENT_TO_DELIVER, SCANNABLE
from moat.mime import MainHeaders
from moat.model import (
    Finding,
    MessageEnvelope,
    MessageStatus,
    RecipientStatus,
    Verdict,
    new_message_id,
)

log = logging.getLogger(__name__)


def _one_of(column: Any, states: Iterable[str]) -> Any:
    """``column IN ('a', 'b')`` with the states written into the SQL: a state list is a fixed
    part of a statement, and bound (expanding) parameters are refused in executemany()."""
    return column.in_([literal_column(f"'{state}'") for state in sorted(states)])


def _locking(*conditions: Any, columns: Sequence[Any] | None = None) -> Select[Any]:
    """The rows among ``:ids`` that meet ``conditions``, locked until the commit (SQLite's
    BEGIN IMMEDIATE locks the whole database; PostgreSQL locks the rows, in id order so that
    two batches cannot deadlock). ``columns``: only the id and these, for a step that reads
    nothing else: converting the whole row (the findings' JSON, five timestamps) was the
    larger part of the scanner's verdict statement (docs/performance.md)."""
    return (
        (select(messages) if columns is None else select(messages.c.id, *columns))
        .where(messages.c.id.in_(bindparam("ids", expanding=True)), *conditions)
        .order_by(messages.c.id)
        .with_for_update()
    )


# A verdict's findings as the JSON column holds them, in one call for the list (a
# model_dump per finding cost 16 calls a message).
_FINDINGS: TypeAdapter[list[Finding]] = TypeAdapter(list[Finding])

# The write path's statements, built once: building one took SQLAlchemy ~250 us, four times
# what running it on SQLite takes, and they run on every batch of every message.
_LOCK_ANY = _locking()
_LOCK_SCANNABLE = _locking(_one_of(messages.c.status, SCANNABLE), columns=[])
_LOCK_CLAIMABLE = _locking(
    _one_of(messages.c.status, DELIVERABLE),
    or_(messages.c.lease_until.is_(None), messages.c.lease_until < bindparam("now")),
)
_LOCK_DELIVERABLE = _locking(_one_of(messages.c.status, DELIVERABLE), columns=[messages.c.status])
_LOCK_FAILABLE = _locking(_one_of(messages.c.status, lifecycle.sources(MessageStatus.FAILED)))
_LOCK_FAILED = _locking(messages.c.status == MessageStatus.FAILED)
_LOCK_TERMINAL = _locking(_one_of(messages.c.status, lifecycle.TERMINAL))
_INSERT_MESSAGES = insert(messages)
_INSERT_RECIPIENTS = insert(recipients)
_INSERT_EVENTS = insert(events)
_MARK_QUEUED = (
    update(messages)
    .where(
        messages.c.id.in_(bindparam("ids", expanding=True)),
        _one_of(messages.c.status, lifecycle.sources(MessageStatus.QUEUED)),
    )
    .values(status=MessageStatus.QUEUED, updated_at=bindparam("now"))
)
_SET_VERDICT = (
    update(messages)
    .where(messages.c.id == bindparam("b_id"), _one_of(messages.c.status, SCANNABLE))
    .values(
        status=bindparam("b_status"),
        verdict=bindparam("b_verdict"),
        score=bindparam("b_score"),
        findings=bindparam("b_findings"),
        subject=bindparam("b_subject"),
        header_from=bindparam("b_from"),
        header_message_id=bindparam("b_message_id"),
        next_attempt_at=bindparam("b_now"),
        updated_at=bindparam("b_now"),
    )
)
_SET_LEASE = (
    update(messages)
    .where(messages.c.id == bindparam("b_id"))
    .values(lease_until=bindparam("b_lease"))
)
_RENEW_LEASE = (
    update(messages)
    .where(
        messages.c.id.in_(bindparam("ids", expanding=True)),
        _one_of(messages.c.status, DELIVERABLE),
        messages.c.lease_until.is_not(None),
    )
    .values(lease_until=bindparam("until"))
)
_QUARANTINE_RECIPIENTS = (
    update(recipients)
    .where(
        recipients.c.message_id.in_(bindparam("ids", expanding=True)),
        _one_of(recipients.c.status, lifecycle.recipient_sources(RecipientStatus.QUARANTINED)),
    )
    .values(status=RecipientStatus.QUARANTINED, updated_at=bindparam("now"))
)
_RECIPIENTS_OF = (
    select(recipients)
    .where(recipients.c.message_id.in_(bindparam("ids", expanding=True)))
    .order_by(recipients.c.id)
)
_RECIPIENT_ATTEMPT = (
    update(recipients)
    .where(recipients.c.id == bindparam("b_id"), _one_of(recipients.c.status, RECIPIENT_TO_DELIVER))
    .values(
        status=bindparam("b_status"),
        reply=bindparam("b_reply"),
        remote_host=bindparam("b_host"),
        attempts=recipients.c.attempts + 1,
        updated_at=bindparam("b_now"),
    )
)
_MESSAGE_ATTEMPT = (
    update(messages)
    .where(messages.c.id == bindparam("b_id"), _one_of(messages.c.status, DELIVERABLE))
    .values(
        status=bindparam("b_status"),
        attempts=messages.c.attempts + 1,
        next_attempt_at=bindparam("b_next"),
        lease_until=None,
        reason=bindparam("b_reason"),
        updated_at=bindparam("b_now"),
    )
)
_RELEASE = (
    update(messages)
    .where(messages.c.id.in_(bindparam("ids", expanding=True)))
    .values(lease_until=None)
)
# Release requests with their message's subject and verdict (for whoever decides).
_REQUESTS = select(release_requests, messages.c.subject, messages.c.verdict).join(
    messages, messages.c.id == release_requests.c.message_id
)


class RecipientRecord(BaseModel):
    id: int
    address: str
    domain: str
    status: RecipientStatus
    attempts: int
    remote_host: str | None
    reply: str | None
    updated_at: datetime


class EventRecord(BaseModel):
    at: datetime
    service: str
    event: str
    detail: str


class MessageRecord(BaseModel):
    id: str
    status: MessageStatus
    mail_from: str
    client_address: str
    helo: str
    size: int
    smtp_utf8: bool
    received_at: datetime
    updated_at: datetime
    verdict: str | None
    score: float | None
    findings: list[Finding] | None
    attempts: int
    next_attempt_at: datetime | None
    bounce_of: str | None
    reason: str | None
    subject: str | None = None
    header_from: str | None = None
    header_message_id: str | None = None
    released_at: datetime | None = None
    released_by: str | None = None
    submitted_by: str | None = None
    recipients: list[RecipientRecord] = []
    events: list[EventRecord] = []


@dataclass(frozen=True)
class RecipientOutcome:
    """The result of one delivery attempt for one recipient."""

    recipient_id: int
    status: RecipientStatus
    reply: str
    remote_host: str | None = None


@dataclass(frozen=True)
class AttemptResult:
    """Everything one delivery attempt changes, written in one step."""

    message_id: str
    outcomes: Sequence[RecipientOutcome]
    status: MessageStatus
    next_attempt_at: datetime | None
    detail: str
    bounce: NewMessage | None = None


@dataclass(frozen=True)
class HoldResult:
    """What a quarantine action did: whether it did anything, to which recipients, the
    message's state afterwards, and why not when it did nothing."""

    done: bool
    recipients: tuple[str, ...]
    status: MessageStatus | None
    why_not: str


@dataclass(frozen=True)
class RecipientMatch:
    """Mail to one address (compared without case) or to any address of one domain."""

    address: str | None = None
    domain: str | None = None


@dataclass(frozen=True)
class MessageSearch:
    """What ``search_messages`` looks for; every criterion given must hold."""

    sender: str | None = None  # in the envelope sender or the From header, without case
    subject: str | None = None  # in the Subject, without case
    recipients: tuple[RecipientMatch, ...] = ()  # each must match some recipient
    statuses: frozenset[MessageStatus] = frozenset()  # any of these (none given: any)
    verdicts: frozenset[str] = frozenset()
    received_after: datetime | None = None  # inclusive
    received_before: datetime | None = None  # exclusive


class ReleaseRequestRecord(BaseModel):
    id: str
    message_id: str
    recipient: str
    requested_by: str
    reason: str
    status: str  # pending | approved | refused
    created_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    subject: str | None = None  # the message's, for whoever decides
    verdict: str | None = None


@dataclass(frozen=True)
class NewMessage:
    message_id: str
    mail_from: str
    rcpt_tos: Sequence[str]
    size: int
    client_address: str = ""
    helo: str = ""
    smtp_utf8: bool = False
    submitted_by: str | None = None  # the authenticated submission user, if any

    @property
    def envelope(self) -> MessageEnvelope:
        return MessageEnvelope(
            mail_from=self.mail_from,
            rcpt_tos=tuple(self.rcpt_tos),
            client_address=self.client_address,
            helo=self.helo,
        )


def _refused(message_id: str, current: str, target: str, service: str) -> None:
    log.warning(
        "%s: refused %s -> %s (from %s): not an allowed transition",
        message_id,
        current,
        target,
        service,
    )


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def _event(message_id: str, service: str, name: str, detail: str = "") -> dict[str, Any]:
    return {
        "message_id": message_id,
        "at": db_now(),
        "service": service,
        "event": name,
        "detail": detail,
    }


class Repository:
    def __init__(self, engine: AsyncEngine, commit_linger: float = 0.0) -> None:
        """``commit_linger``: see ``BatchWriter``; 0 for a caller that someone waits for."""
        self.engine = engine
        self.reader = engine.execution_options(**{READ_ONLY: True})
        self.writes = BatchWriter(
            engine,
            {
                "received": self._bulk_received,
                "queued": self._bulk_queued,
                "verdict": self._bulk_verdict,
                "claim": self._bulk_claim,
                "attempt": self._bulk_attempt,
                "release": self._bulk_release,
                "renew": self._bulk_renew,
                "status": self._bulk_transition,
                "dead_letter": self._bulk_dead_letter,
                "retry": self._bulk_retry,
                "remove": self._bulk_remove,
                "notice": self._bulk_notice,
                "feedback": self._bulk_feedback,
                "hold_action": self._bulk_hold_action,
                "release_request": self._bulk_release_request,
                "decide_request": self._bulk_decide_request,
            },
            linger=commit_linger,
        )

    async def close(self) -> None:
        self.writes.close()
        await self.engine.dispose()

    # --- the steps ---------------------------------------------------------------------------

    async def record_received(self, new: NewMessage) -> None:
        """Ingress: a message stored in the spool, waiting for its publish."""
        await self.writes.submit("received", new)

    async def mark_queued(self, message_ids: Iterable[str]) -> None:
        """Ingress: the broker confirmed these messages' publish for scanning."""
        ids = list(message_ids)
        if ids:
            await self.writes.submit("queued", ids)

    async def mark_rejected(self, message_id: str, reason: str) -> None:
        """Ingress: the sender got 451 for this message; it must never be processed."""
        await self.transition(message_id, MessageStatus.REJECTED, "ingress", "rejected", reason)

    async def record_verdict(
        self,
        message_id: str,
        verdict: Verdict,
        status: MessageStatus,
        headers: MainHeaders | None = None,
    ) -> bool:
        """Scanner: store the verdict once, with the main headers the API searches and shows;
        False if the message already has one."""
        result: bool = await self.writes.submit(
            "verdict", (message_id, verdict, status, headers or MainHeaders())
        )
        return result

    async def claim_for_delivery(
        self, message_id: str, attempt: int, lease: timedelta
    ) -> MessageRecord | None:
        """Delivery: take the message for this attempt and return it with its recipients;
        None if another worker holds it or the attempt was already made (a stale or duplicate
        request)."""
        record: MessageRecord | None = await self.writes.submit(
            "claim", (message_id, attempt, lease)
        )
        return record

    async def record_attempt(self, result: AttemptResult) -> bool:
        """Delivery: one attempt's per-recipient outcomes, the message's new state, the lease
        released, and the DSN (already spooled) if one is due, all in one transaction. False if
        the message is no longer one delivery may work on (nothing is written then)."""
        recorded: bool = await self.writes.submit("attempt", result)
        return recorded

    async def release_lease(self, message_id: str) -> None:
        await self.writes.submit("release", message_id)

    async def renew_lease(self, message_id: str, lease: timedelta) -> None:
        """Delivery: still working on it; hold the lease ``lease`` longer from now."""
        await self.writes.submit("renew", (message_id, lease))

    async def mark_failed(self, message_id: str, service: str, reason: str) -> bool:
        """Any consumer: the message is dead-lettered. False (and nothing written) if it is in
        a state that cannot fail, e.g. delivered already."""
        return await self.transition(message_id, MessageStatus.FAILED, service, "failed", reason)

    async def transition(
        self, message_id: str, target: MessageStatus, service: str, event: str, reason: str
    ) -> bool:
        """Move a message to ``target`` if the lifecycle allows it from its current state,
        with ``reason`` recorded and an event in its timeline; False if it was refused."""
        moved: bool = await self.writes.submit(
            "status", (message_id, target, service, event, reason)
        )
        return moved

    async def retry_failed(self, message_id: str) -> MessageStatus | None:
        """Admin: put a failed message back where it failed: scanning if it has no verdict
        (status ``received``, so the ingress sweep publishes it should we not), else delivery
        (``delivering``, which the delivery sweep covers). None if it is not ``failed``."""
        result: MessageStatus | None = await self.writes.submit("retry", message_id)
        return result

    async def record_dead_letter(
        self, message_id: str, reason: str, died_at: datetime | None = None
    ) -> bool:
        """The broker dead-lettered this message's queue entry without a consumer recording
        it (the consumer died on every try): mark it ``failed`` unless it is past that stage,
        or an administrator retried it at or after ``died_at`` (the copy is older than the
        retry). True if it was marked now."""
        marked: bool = await self.writes.submit("dead_letter", (message_id, reason, died_at))
        return marked

    async def record_notice(self, new: NewMessage, service: str = "api") -> None:
        """A message Moat wrote itself (a quarantine digest, an answer to a release request),
        already spooled: recorded ready for delivery, from the null sender."""
        await self.writes.submit("notice", (new, service))

    def notices_in(self, conn: Connection, news: Sequence[NewMessage], service: str) -> None:
        """Record notices (already spooled) in a transaction of the caller's own: the digest
        marks what it told each recipient in the very transaction that records the mail
        telling them, so a crash leaves neither a digest unmarked nor marks without one."""
        self._insert_messages(conn, list(news), MessageStatus.DELIVERING, service)

    async def release_held(
        self, message_id: str, recipients: Sequence[str], by: str, *, rescan: bool = False
    ) -> HoldResult:
        """Let these quarantined recipients of a quarantined message go: they become pending
        and the message ``released`` (delivery's to work on), or with ``rescan`` the whole
        message goes back to ``received`` without its verdict, to be judged again (published
        for scanning by the caller; the ingress sweep does it should the caller not)."""
        result: HoldResult = await self.writes.submit(
            "hold_action", ("release", message_id, tuple(recipients), by, rescan)
        )
        return result

    async def delete_held(self, message_id: str, recipients: Sequence[str], by: str) -> HoldResult:
        """Delete these quarantined recipients' copy of a quarantined (or failed) message; once
        no recipient is held any more the message is ``deleted`` (and its raw copy may go)."""
        result: HoldResult = await self.writes.submit(
            "hold_action", ("delete", message_id, tuple(recipients), by, False)
        )
        return result

    async def record_feedback(self, message_id: str, label: str, source: str) -> None:
        """Spam/ham feedback on a message, for a scanner to learn (the API never loads the
        classifier)."""
        await self.writes.submit("feedback", (message_id, label, source))

    async def request_release(
        self, message_id: str, recipients: Sequence[str], requested_by: str, reason: str
    ) -> tuple[list[ReleaseRequestRecord], list[str]]:
        """A pending release request for each of these recipients of a message that has none
        yet. Returns the requests made and the recipients that had one pending already."""
        result: tuple[list[ReleaseRequestRecord], list[str]] = await self.writes.submit(
            "release_request", (message_id, tuple(recipients), requested_by, reason)
        )
        return result

    async def decide_release_request(
        self,
        request_id: str,
        status: str,
        by: str | None,
        *,
        expected: str = "pending",
        why: str = "",
    ) -> ReleaseRequestRecord | None:
        """Move a release request from ``expected`` to ``status`` (approved, refused, or back
        to pending, ``why``, when an approval could not be carried out), with an event in the
        message's timeline; None if it is not in ``expected`` (unknown, or decided meanwhile):
        two deciders never both win."""
        result: ReleaseRequestRecord | None = await self.writes.submit(
            "decide_request", (request_id, status, by, expected, why)
        )
        return result

    async def remove_records(self, message_ids: list[str]) -> int:
        """Retention: delete finished messages (terminal states only) with their recipients
        and timeline. Returns how many were removed."""
        removed: int = await self.writes.submit("remove", message_ids)
        return removed

    # --- bulk handlers: one call per kind and batch --------------------------------------------

    def _bulk_received(self, conn: Connection, news: list[NewMessage]) -> list[None]:
        self._insert_messages(conn, news, MessageStatus.RECEIVED, "ingress")
        return [None] * len(news)

    def _bulk_queued(self, conn: Connection, batches: list[list[str]]) -> list[None]:
        ids = [message_id for batch in batches for message_id in batch]
        conn.execute(_MARK_QUEUED, {"ids": ids, "now": db_now()})
        return [None] * len(batches)

    def _bulk_verdict(
        self, conn: Connection, items: list[tuple[str, Verdict, MessageStatus, MainHeaders]]
    ) -> list[bool]:
        scannable = self._lock(conn, [item[0] for item in items], _LOCK_SCANNABLE)
        now = db_now()
        results, rows, history = [], [], []
        for message_id, verdict, status, headers in items:
            fresh = message_id in scannable
            scannable.pop(message_id, None)  # the same message twice in a batch: first wins
            results.append(fresh)
            if not fresh:
                continue
            rows.append(
                {
                    "b_id": message_id,
                    "b_status": status,
                    "b_verdict": verdict.verdict,
                    "b_score": verdict.score,
                    "b_now": now,
                    "b_findings": _FINDINGS.dump_python(verdict.findings, mode="json"),
                    "b_subject": headers.subject,
                    "b_from": headers.from_,
                    "b_message_id": headers.message_id,
                }
            )
            history.append(
                _event(
                    message_id,
                    "scanner",
                    "scanned",
                    f"{verdict.verdict} score={verdict.score:.2f} action={verdict.action}",
                )
            )
        if rows:
            conn.execute(_SET_VERDICT, rows)
            conn.execute(_INSERT_EVENTS, history)
        held = [row["b_id"] for row in rows if row["b_status"] == MessageStatus.QUARANTINED]
        if held:
            conn.execute(_QUARANTINE_RECIPIENTS, {"ids": held, "now": now})
            conn.execute(
                _INSERT_EVENTS,
                [
                    _event(str(row["b_id"]), "scanner", "quarantined", str(row["b_verdict"]))
                    for row in rows
                    if row["b_status"] == MessageStatus.QUARANTINED
                ],
            )
        return results

    def _bulk_claim(
        self, conn: Connection, items: list[tuple[str, int, timedelta]]
    ) -> list[MessageRecord | None]:
        now = db_now()
        candidates = self._lock(conn, [item[0] for item in items], _LOCK_CLAIMABLE, now=now)
        claimed: dict[str, MessageRecord] = {}
        leases = []
        for message_id, attempt, lease in items:
            row = candidates.pop(message_id, None)
            if row is None or row.attempts != attempt:
                continue
            claimed[message_id] = MessageRecord.model_validate(row._mapping)
            leases.append({"b_id": message_id, "b_lease": now + lease})
        if leases:
            conn.execute(_SET_LEASE, leases)
            rcpt_rows = conn.execute(_RECIPIENTS_OF, {"ids": list(claimed)})
            for row in rcpt_rows:
                claimed[row.message_id].recipients.append(
                    RecipientRecord.model_validate(row._mapping)
                )
        results: list[MessageRecord | None] = []
        for message_id, _, _ in items:
            results.append(claimed.pop(message_id, None))
        return results

    def _bulk_attempt(self, conn: Connection, items: list[AttemptResult]) -> list[bool]:
        now = db_now()
        current = self._lock(conn, [item.message_id for item in items], _LOCK_DELIVERABLE)
        results, recorded = [], []
        for item in items:
            row = current.pop(item.message_id, None)  # the same message twice: first wins
            ok = row is not None and lifecycle.allowed(row.status, item.status)
            if not ok:
                _refused(item.message_id, row.status if row else "gone", item.status, "delivery")
            results.append(ok)
            if ok:
                recorded.append(item)
        items = recorded
        if not items:
            return results
        outcome_rows = [
            {
                "b_id": o.recipient_id,
                "b_status": o.status,
                "b_reply": o.reply,
                "b_host": o.remote_host,
                "b_now": now,
            }
            for item in items
            for o in item.outcomes
        ]
        if outcome_rows:
            conn.execute(_RECIPIENT_ATTEMPT, outcome_rows)
        conn.execute(
            _MESSAGE_ATTEMPT,
            [
                {
                    "b_id": item.message_id,
                    "b_status": item.status,
                    "b_next": item.next_attempt_at,
                    "b_reason": item.detail if item.status == MessageStatus.DEFERRED else None,
                    "b_now": now,
                }
                for item in items
            ],
        )
        history = [_event(item.message_id, "delivery", item.status, item.detail) for item in items]
        bounces = [item for item in items if item.bounce is not None]
        history += [
            _event(item.message_id, "delivery", "dsn_queued", f"DSN {item.bounce.message_id}")
            for item in bounces
            if item.bounce
        ]
        conn.execute(_INSERT_EVENTS, history)
        for item in bounces:
            assert item.bounce is not None
            self._insert_messages(
                conn, [item.bounce], MessageStatus.DELIVERING, "delivery", bounce_of=item.message_id
            )
        return results

    def _bulk_release(self, conn: Connection, ids: list[str]) -> list[None]:
        conn.execute(_RELEASE, {"ids": ids})
        return [None] * len(ids)

    def _bulk_feedback(self, conn: Connection, items: list[tuple[str, str, str]]) -> list[None]:
        now = db_now()
        conn.execute(
            insert(feedback),
            [
                {"message_id": m, "label": label, "source": source, "created_at": now}
                for m, label, source in items
            ],
        )
        return [None] * len(items)

    def _bulk_notice(self, conn: Connection, items: list[tuple[NewMessage, str]]) -> list[None]:
        for new, service in items:
            self._insert_messages(conn, [new], MessageStatus.DELIVERING, service)
        return [None] * len(items)

    def _bulk_hold_action(
        self, conn: Connection, items: list[tuple[str, str, tuple[str, ...], str, bool]]
    ) -> list[HoldResult]:
        results = []
        for action, message_id, wanted, by, rescan in items:
            rows = self._lock(conn, [message_id], _LOCK_ANY)
            row = rows.get(message_id)
            if row is None:
                results.append(HoldResult(False, (), None, "no such message"))
                continue
            current = MessageStatus(row.status)
            held = {
                r.address.lower(): r
                for r in conn.execute(_RECIPIENTS_OF, {"ids": [message_id]})
                if r.status == RecipientStatus.QUARANTINED
            }
            chosen = [held[a.lower()] for a in wanted if a.lower() in held]
            why_not = ""
            if current not in (MessageStatus.QUARANTINED, MessageStatus.FAILED) or (
                action == "release" and current != MessageStatus.QUARANTINED
            ):
                why_not = f"it is {current}, not in quarantine"
            elif not chosen and current == MessageStatus.QUARANTINED:
                why_not = "none of those recipients is held"
            elif rescan and len(chosen) < len(held):
                why_not = "a rescan is of the whole message: release every recipient"
            if why_not:
                results.append(HoldResult(False, (), current, why_not))
                continue
            now = db_now()
            addresses = tuple(r.address for r in chosen)
            detail = f"{', '.join(addresses)} by {by}" if addresses else f"by {by}"
            if chosen:
                conn.execute(
                    update(recipients)
                    .where(
                        recipients.c.id.in_([r.id for r in chosen]),
                        recipients.c.status == RecipientStatus.QUARANTINED,
                    )
                    .values(
                        status=RecipientStatus.PENDING
                        if action == "release"
                        else RecipientStatus.DELETED,
                        updated_at=now,
                    )
                )
            if action == "delete" and len(chosen) < len(held):
                # Others are still held: the message stays in quarantine for them.
                conn.execute(_INSERT_EVENTS, [_event(message_id, "api", "deleted", detail)])
                results.append(HoldResult(True, addresses, current, ""))
                continue
            values: dict[str, Any] = {}
            if action == "release":
                target = MessageStatus.RECEIVED if rescan else MessageStatus.RELEASED
                values = {"released_at": now, "released_by": by, "next_attempt_at": now}
                if rescan:
                    values.update(verdict=None, score=None, findings=None)
            else:
                target = MessageStatus.DELETED
            # Only the chosen recipients move: the others of a partial release stay held.
            self._move(conn, message_id, current, target, None, follow=False, **values)
            name = "rescan" if rescan else ("released" if action == "release" else "deleted")
            conn.execute(_INSERT_EVENTS, [_event(message_id, "api", name, detail)])
            results.append(HoldResult(True, addresses, target, ""))
        return results

    def _bulk_release_request(
        self, conn: Connection, items: list[tuple[str, tuple[str, ...], str, str]]
    ) -> list[tuple[list[ReleaseRequestRecord], list[str]]]:
        results = []
        for message_id, wanted, requested_by, reason in items:
            # The message's row lock makes "none pending yet, so insert" one step: two
            # requests at once cannot both insert.
            self._lock(conn, [message_id], _LOCK_ANY)
            pending = {
                row.recipient.lower()
                for row in conn.execute(
                    select(release_requests.c.recipient).where(
                        release_requests.c.message_id == message_id,
                        release_requests.c.status == "pending",
                    )
                )
            }
            now = db_now()
            made = [
                ReleaseRequestRecord(
                    id=new_message_id(),
                    message_id=message_id,
                    recipient=address,
                    requested_by=requested_by,
                    reason=reason,
                    status="pending",
                    created_at=now,
                    decided_at=None,
                    decided_by=None,
                )
                for address in wanted
                if address.lower() not in pending
            ]
            if made:
                conn.execute(
                    insert(release_requests),
                    [r.model_dump(exclude={"subject", "verdict"}) for r in made],
                )
                conn.execute(
                    _INSERT_EVENTS,
                    [
                        _event(
                            message_id,
                            "api",
                            "release_requested",
                            f"{', '.join(r.recipient for r in made)} by {requested_by}",
                        )
                    ],
                )
            results.append((made, [a for a in wanted if a.lower() in pending]))
        return results

    def _bulk_decide_request(
        self, conn: Connection, items: list[tuple[str, str, str | None, str, str]]
    ) -> list[ReleaseRequestRecord | None]:
        results: list[ReleaseRequestRecord | None] = []
        for request_id, status, by, expected, why in items:
            decided = status != "pending"
            changed = conn.execute(
                update(release_requests)
                .where(release_requests.c.id == request_id, release_requests.c.status == expected)
                .values(
                    status=status,
                    decided_at=db_now() if decided else None,
                    decided_by=by if decided else None,
                )
            ).rowcount
            if not changed:
                results.append(None)
                continue
            row = conn.execute(_REQUESTS.where(release_requests.c.id == request_id)).one()
            record = ReleaseRequestRecord.model_validate(row._mapping)
            name = f"release_{status}" if decided else "release_reopened"
            detail = f"request for {record.recipient}" + (f" by {by}" if decided else f": {why}")
            conn.execute(_INSERT_EVENTS, [_event(record.message_id, "api", name, detail)])
            results.append(record)
        return results

    def _bulk_remove(self, conn: Connection, batches: list[list[str]]) -> list[int]:
        results = []
        for ids in batches:
            done = list(self._lock(conn, ids, _LOCK_TERMINAL))
            if done:
                # Release requests refer to their message: they go with it.
                conn.execute(
                    delete(release_requests).where(release_requests.c.message_id.in_(done))
                )
                conn.execute(delete(events).where(events.c.message_id.in_(done)))
                conn.execute(delete(recipients).where(recipients.c.message_id.in_(done)))
                conn.execute(delete(messages).where(messages.c.id.in_(done)))
            results.append(len(done))
        return results

    def _bulk_renew(self, conn: Connection, items: list[tuple[str, timedelta]]) -> list[None]:
        now = db_now()
        for message_id, lease in items:
            conn.execute(_RENEW_LEASE, {"ids": [message_id], "until": now + lease})
        return [None] * len(items)

    def _bulk_dead_letter(
        self, conn: Connection, items: list[tuple[str, str, datetime | None]]
    ) -> list[bool]:
        pending = self._lock(conn, [item[0] for item in items], _LOCK_FAILABLE)
        retried = self._last_retries(conn, list(pending))
        results = []
        for message_id, reason, died_at in items:
            row = pending.pop(message_id, None)
            last_retry = retried.get(message_id)
            # Whole-second death times: a retry in the same second counts as after the death
            # (a crash loop takes longer than a second to reach the delivery limit again).
            if died_at is not None and last_retry is not None and last_retry >= died_at:
                row = None
            results.append(row is not None)
            if row is not None:
                self._move(conn, message_id, row.status, MessageStatus.FAILED, reason)
                conn.execute(_INSERT_EVENTS, [_event(message_id, "broker", "failed", reason)])
        return results

    def _bulk_transition(
        self, conn: Connection, items: list[tuple[str, MessageStatus, str, str, str]]
    ) -> list[bool]:
        """Rarer changes (rejected, failed, deleted, purged...), each with its reason; each
        only if the lifecycle allows it from the row's current state."""
        existing = self._lock(conn, [item[0] for item in items], _LOCK_ANY)
        status_now = {message_id: MessageStatus(row.status) for message_id, row in existing.items()}
        results = []
        for message_id, target, service, event_name, reason in items:
            current = status_now.get(message_id)
            if current is None:
                results.append(False)  # no such message: nothing to record it on
                continue
            if not lifecycle.allowed(current, target):
                _refused(message_id, current, target, service)
                results.append(False)
                continue
            self._move(conn, message_id, current, target, reason)
            conn.execute(_INSERT_EVENTS, [_event(message_id, service, event_name, reason)])
            status_now[message_id] = target
            results.append(True)
        return results

    def _last_retries(self, conn: Connection, ids: list[str]) -> dict[str, datetime]:
        """When each of ``ids`` was last retried by an administrator, for those ever retried."""
        if not ids:
            return {}
        rows = conn.execute(
            select(events.c.message_id, func.max(events.c.at))
            .where(events.c.message_id.in_(ids), events.c.event == "retried")
            .group_by(events.c.message_id)
        )
        return {message_id: at for message_id, at in rows}

    def _bulk_retry(self, conn: Connection, ids: list[str]) -> list[MessageStatus | None]:
        failed = self._lock(conn, ids, _LOCK_FAILED)
        results: list[MessageStatus | None] = []
        for message_id in ids:
            row = failed.pop(message_id, None)
            if row is None:
                results.append(None)
                continue
            status = MessageStatus.RECEIVED if row.verdict is None else MessageStatus.DELIVERING
            self._move(conn, message_id, row.status, status, None, next_attempt_at=db_now())
            conn.execute(
                _INSERT_EVENTS, [_event(message_id, "api", "retried", f"back to {status}")]
            )
            results.append(status)
        return results

    def _move(
        self,
        conn: Connection,
        message_id: str,
        current: str,
        target: MessageStatus,
        reason: str | None,
        *,
        follow: bool = True,
        **values: Any,
    ) -> None:
        """Change one locked row's state (the caller checked the lifecycle), conditional on
        the state it was read in; recipients follow where the table says they do, unless
        the caller moved them itself (``follow=False``)."""
        lifecycle.check(message_id, MessageStatus(current), target)
        now = db_now()
        conn.execute(
            update(messages)
            .where(messages.c.id == message_id, messages.c.status == current)
            .values(status=target, reason=reason, lease_until=None, updated_at=now, **values)
        )
        follows = lifecycle.RECIPIENTS_FOLLOW.get(target) if follow else None
        if follows is not None:
            conn.execute(
                update(recipients)
                .where(
                    recipients.c.message_id == message_id,
                    _one_of(recipients.c.status, lifecycle.recipient_sources(follows)),
                )
                .values(status=follows, updated_at=now)
            )

    def _lock(
        self, conn: Connection, ids: list[str], statement: Select[Any], **params: Any
    ) -> dict[str, Any]:
        """The rows among ``ids`` that a ``_locking`` statement selects, by id."""
        rows = conn.execute(statement, {"ids": sorted(set(ids)), **params})
        return {row.id: row for row in rows}

    def _insert_messages(
        self,
        conn: Connection,
        news: list[NewMessage],
        status: MessageStatus,
        service: str,
        bounce_of: str | None = None,
    ) -> None:
        now = db_now()
        conn.execute(
            _INSERT_MESSAGES,
            [
                {
                    "id": new.message_id,
                    "status": status,
                    "mail_from": new.mail_from,
                    "client_address": new.client_address,
                    "helo": new.helo,
                    "size": new.size,
                    "smtp_utf8": new.smtp_utf8,
                    "received_at": now,
                    "updated_at": now,
                    "attempts": 0,
                    "next_attempt_at": now if status == MessageStatus.DELIVERING else None,
                    "bounce_of": bounce_of,
                    "submitted_by": new.submitted_by,
                }
                for new in news
            ],
        )
        conn.execute(
            _INSERT_RECIPIENTS,
            [
                {
                    "message_id": new.message_id,
                    "address": address,
                    "domain": _domain(address),
                    "status": RecipientStatus.PENDING,
                    "attempts": 0,
                    "updated_at": now,
                }
                for new in news
                for address in new.rcpt_tos
            ],
        )
        conn.execute(
            _INSERT_EVENTS,
            [
                _event(
                    new.message_id,
                    service,
                    "received",
                    f"from=<{new.mail_from}> to={len(new.rcpt_tos)} size={new.size}"
                    + (f" client={new.client_address}" if new.client_address else ""),
                )
                for new in news
            ],
        )

    # --- reads -------------------------------------------------------------------------------

    async def unconfirmed(self, older_than: timedelta, limit: int = 500) -> list[str]:
        """Messages stored but whose publish for scanning was never recorded as confirmed."""
        cutoff = db_now() - older_than
        async with self.reader.connect() as conn:
            rows = await conn.execute(
                select(messages.c.id)
                .where(messages.c.status == MessageStatus.RECEIVED, messages.c.received_at < cutoff)
                .order_by(messages.c.id)
                .limit(limit)
            )
            return [row.id for row in rows]

    async def overdue_for_delivery(
        self, grace: timedelta, limit: int = 500
    ) -> list[tuple[str, int]]:
        """Mail delivery should be working on but is not: its next attempt should have happened
        ``grace`` ago and no worker holds it (its request was lost: a crash before publish), or
        its lease ran out (the worker holding it died: a live one keeps renewing it). Returns
        (id, attempt)."""
        now = db_now()
        async with self.reader.connect() as conn:
            rows = await conn.execute(
                select(messages.c.id, messages.c.attempts)
                .where(
                    _one_of(messages.c.status, DELIVERABLE),
                    or_(
                        messages.c.lease_until < now,
                        (messages.c.lease_until.is_(None))
                        & (messages.c.next_attempt_at < now - grace),
                    ),
                )
                .order_by(messages.c.next_attempt_at)
                .limit(limit)
            )
            return [(row.id, row.attempts) for row in rows]

    async def older_than(
        self, states: Iterable[MessageStatus], age: timedelta, limit: int, *, by: str = "updated"
    ) -> list[str]:
        """Messages in ``states`` last changed (``by="updated"``) or received (``"received"``)
        more than ``age`` ago, oldest first: what retention works on, a batch at a time."""
        column = messages.c.updated_at if by == "updated" else messages.c.received_at
        async with self.reader.connect() as conn:
            rows = await conn.execute(
                select(messages.c.id)
                .where(_one_of(messages.c.status, states), column < db_now() - age)
                .order_by(column)
                .limit(limit)
            )
            return [row.id for row in rows]

    async def states_of(self, message_ids: list[str]) -> dict[str, tuple[MessageStatus, datetime]]:
        """Status and last change of each of these messages that exists."""
        async with self.reader.connect() as conn:
            rows = await conn.execute(
                select(messages.c.id, messages.c.status, messages.c.updated_at).where(
                    messages.c.id.in_(message_ids)
                )
            )
            return {row.id: (MessageStatus(row.status), row.updated_at) for row in rows}

    async def get(self, message_id: str, *, with_history: bool = True) -> MessageRecord | None:
        async with self.reader.connect() as conn:
            row = (await conn.execute(select(messages).where(messages.c.id == message_id))).first()
            if row is None:
                return None
            record = MessageRecord.model_validate(row._mapping)
            rcpt_rows = await conn.execute(
                select(recipients)
                .where(recipients.c.message_id == message_id)
                .order_by(recipients.c.id)
            )
            record.recipients = [RecipientRecord.model_validate(r._mapping) for r in rcpt_rows]
            if with_history:
                event_rows = await conn.execute(
                    select(events).where(events.c.message_id == message_id).order_by(events.c.id)
                )
                record.events = [EventRecord.model_validate(e._mapping) for e in event_rows]
            return record

    async def search_messages(
        self, search: MessageSearch, *, before_id: str | None, limit: int
    ) -> list[MessageRecord]:
        """Messages that match ``search``, newest first (by id: a ULID sorts by arrival, and
        paging by id is stable while mail keeps coming), from ``before_id`` on, with their
        recipients (no timeline).

        What it costs: one statement for the page and one for its recipients (by their
        message_id index: the page's only). Without a narrowing criterion the page walks the
        messages' primary key down from ``before_id`` and stops after ``limit`` matching
        rows. A recipient (or a scoped token) first takes that address's rows from
        ``ix_recipients_address_lower``, a domain's from ``ix_recipients_domain``, then looks
        each message up by key: cost grows with that recipient's mail, not with the table. A
        status may be narrowed by ``ix_messages_status_updated`` and that status's rows sorted
        (quarantined mail: what retention keeps). Substrings (sender, subject) use no index:
        matched row by row on the walk, a rare one may read every message retention keeps.
        Measured plans on SQLite: tests/unit/test_repository_search.py; the database picks.
        """
        query = select(messages).order_by(messages.c.id.desc()).limit(limit)
        if before_id is not None:
            query = query.where(messages.c.id < before_id)
        for match in search.recipients:
            if match.address is not None:
                condition = func.lower(recipients.c.address) == match.address.lower()
            else:
                condition = recipients.c.domain == (match.domain or "").lower()
            query = query.where(messages.c.id.in_(select(recipients.c.message_id).where(condition)))
        if search.sender:
            query = query.where(
                or_(
                    messages.c.mail_from.icontains(search.sender, autoescape=True),
                    messages.c.header_from.icontains(search.sender, autoescape=True),
                )
            )
        if search.subject:
            query = query.where(messages.c.subject.icontains(search.subject, autoescape=True))
        if search.statuses:
            query = query.where(messages.c.status.in_(sorted(search.statuses)))
        if search.verdicts:
            query = query.where(messages.c.verdict.in_(sorted(search.verdicts)))
        if search.received_after is not None:
            query = query.where(messages.c.received_at >= search.received_after)
        if search.received_before is not None:
            query = query.where(messages.c.received_at < search.received_before)
        async with self.reader.connect() as conn:
            rows = await conn.execute(query)
            found = [MessageRecord.model_validate(row._mapping) for row in rows]
            if found:
                by_id = {record.id: record for record in found}
                rcpt_rows = await conn.execute(
                    select(recipients)
                    .where(recipients.c.message_id.in_(list(by_id)))
                    .order_by(recipients.c.id)
                )
                for row in rcpt_rows:
                    by_id[row.message_id].recipients.append(
                        RecipientRecord.model_validate(row._mapping)
                    )
        return found

    async def release_requests(
        self,
        *,
        statuses: Iterable[str] = (),
        message_id: str | None = None,
        request_id: str | None = None,
        before_id: str | None = None,
        limit: int = 50,
    ) -> list[ReleaseRequestRecord]:
        """Release requests, newest first."""
        query = _REQUESTS.order_by(release_requests.c.id.desc()).limit(limit)
        wanted = sorted(statuses)
        if wanted:
            query = query.where(release_requests.c.status.in_(wanted))
        if message_id is not None:
            query = query.where(release_requests.c.message_id == message_id)
        if request_id is not None:
            query = query.where(release_requests.c.id == request_id)
        if before_id is not None:
            query = query.where(release_requests.c.id < before_id)
        async with self.reader.connect() as conn:
            rows = await conn.execute(query)
            return [ReleaseRequestRecord.model_validate(row._mapping) for row in rows]

    async def counts_since(self, since: datetime) -> tuple[dict[str, int], dict[str, int]]:
        """Messages received since ``since``: how many are in each status, and how many got
        each verdict (the unscanned have none)."""
        window = messages.c.received_at >= since
        async with self.reader.connect() as conn:
            by_status = await conn.execute(
                select(messages.c.status, func.count()).where(window).group_by(messages.c.status)
            )
            statuses = {row[0]: int(row[1]) for row in by_status}
            by_verdict = await conn.execute(
                select(messages.c.verdict, func.count())
                .where(window, messages.c.verdict.is_not(None))
                .group_by(messages.c.verdict)
            )
            return statuses, {row[0]: int(row[1]) for row in by_verdict}

    async def count_by_status(self) -> dict[str, int]:
        async with self.reader.connect() as conn:
            rows = await conn.execute(
                select(messages.c.status, func.count()).group_by(messages.c.status)
            )
            return {row[0]: row[1] for row in rows}
