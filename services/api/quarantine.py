"""What can be done to quarantined mail, and who may: the service layer that the REST routes,
the web page and the one-click links of digests all call, so that an action means the same
wherever it is asked for. Finding mail (search), reading it (raw copy, safe preview), releasing
and deleting it, one message or many, and asking an administrator to release it.

Who may release what (what users of these gateways ask for most): a recipient (a user or
domain token, or a digest link) may release their own *spam*; virus and policy quarantine is
released by an administrator only, or on a recipient's request that an administrator approves.
A user acts on their own recipients of a message only: releasing a message to Bob and Carol
with Bob's token lets Bob's copy go, and Carol's stays held.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any

from moat import mime
from moat.broker import Broker, PublishError
from moat.model import DeliveryRequest, MessageStatus, RecipientStatus, ScanRequest, VerdictName
from moat.notices import send_notice
from moat.repository import (
    HoldResult,
    MessageRecord,
    MessageSearch,
    RecipientMatch,
    ReleaseRequestRecord,
    Repository,
)
from moat.settings import Settings
from moat.spool import Copy, MessageStore
from moat.topology import DELIVER, SCAN
from services.api.audit import AuditLog
from services.api.auth import Principal, Role

log = logging.getLogger("api")

# Verdicts whose quarantine a recipient may not release alone.
ADMIN_ONLY_RELEASE = frozenset({VerdictName.VIRUS, VerdictName.POLICY})

# States whose raw copy is gone for good. Finished mail (delivered, bounced) keeps its copy
# while ``retention.delivered_copy`` says: whether it is still there, the spool tells.
COPY_GONE = frozenset({MessageStatus.DELETED, MessageStatus.PURGED, MessageStatus.REJECTED})
# A recipient's copy that is gone: a scoped token no longer reads a message it deleted.
RECIPIENT_GONE = frozenset({RecipientStatus.DELETED, RecipientStatus.PURGED})

_CURSOR_PREFIX = b"m1:"  # a cursor is this and the last id of the page, base64url

# How a bulk result names what ``Refused`` says with a status (else: conflict).
_OUTCOMES = {403: "forbidden", 404: "not_found"}


class Refused(Exception):
    """The action is not possible or not allowed; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Done:
    message_id: str
    action: str  # released | rescanned | deleted
    recipients: tuple[str, ...]
    status: MessageStatus  # the message's state afterwards
    detail: str = ""  # e.g. that the next step waits for the broker


@dataclass(frozen=True)
class Page:
    messages: list[MessageRecord]
    next: str | None  # the cursor of the next page; None on the last


@dataclass(frozen=True)
class BulkOutcome:
    message_id: str
    outcome: str  # released | deleted | not_found | conflict | forbidden
    detail: str


@dataclass(frozen=True)
class Decision:
    request: ReleaseRequestRecord
    release: Done | None  # what the approval released
    notified: bool  # the requester's notice is queued for delivery


def encode_cursor(message_id: str) -> str:
    return base64.urlsafe_b64encode(_CURSOR_PREFIX + message_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The id a cursor continues from; ``Refused(422)`` for anything that is not a cursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    message_id = raw.removeprefix(_CURSOR_PREFIX).decode("ascii", "replace")
    if not raw.startswith(_CURSOR_PREFIX) or not (message_id.isalnum() and len(message_id) <= 26):
        raise Refused(422, "cursor: not a cursor this API gave out")
    return message_id


def scope_of(caller: Principal) -> tuple[RecipientMatch, ...]:
    """The recipient criterion that keeps a scoped token within its scope."""
    if caller.role == Role.USER:
        return (RecipientMatch(address=caller.scope),)
    if caller.role == Role.DOMAIN:
        return (RecipientMatch(domain=caller.scope),)
    return ()


def _within(caller: Principal, match: RecipientMatch) -> bool:
    """Whether a recipient criterion stays within the caller's scope."""
    if match.address is not None:
        return caller.covers(match.address)
    if caller.role == Role.USER:
        return (caller.scope or "").rpartition("@")[2] == match.domain
    return caller.sees_everything or caller.scope == match.domain


def recipient_match(value: str) -> RecipientMatch:
    """``bob@example.test`` (an address, without case) or ``@example.test`` (a domain)."""
    value = value.strip()
    local, at, domain = value.rpartition("@")
    domain = domain.lower().rstrip(".")
    if not at or not domain:
        raise Refused(422, f"recipient: an address or @domain, not {value!r}")
    return RecipientMatch(domain=domain) if not local else RecipientMatch(address=value.lower())


def held_for(caller: Principal, record: MessageRecord) -> list[str]:
    """The recipients of ``record`` held in quarantine that ``caller`` may act for."""
    return [
        r.address
        for r in record.recipients
        if r.status == RecipientStatus.QUARANTINED and caller.covers(r.address)
    ]


def may_release(caller: Principal, record: MessageRecord) -> bool:
    if not caller.may_change:
        return False
    return caller.is_admin or record.verdict not in ADMIN_ONLY_RELEASE


class Quarantine:
    def __init__(
        self,
        repository: Repository,
        store: MessageStore,
        broker: Broker,
        audit: AuditLog,
        settings: Settings,
    ) -> None:
        self.repository = repository
        self.store = store
        self.broker = broker
        self.audit = audit
        self.settings = settings

    async def visible(self, caller: Principal, message_id: str) -> MessageRecord:
        """The message if ``caller`` may see it; else ``Refused(404)``, the same as for an
        unknown id."""
        record = None
        if message_id.isalnum() and len(message_id) <= 26:
            record = await self.repository.get(message_id, with_history=False)
        if record is None or not caller.sees(r.address for r in record.recipients):
            raise Refused(404, f"no message {message_id!r}")
        return record

    async def search(
        self, caller: Principal, search: MessageSearch, cursor: str | None, limit: int
    ) -> Page:
        """A page of the messages that match ``search`` and that ``caller`` may see, newest
        first. A scoped token's scope is one more criterion, and the recipients it names
        must lie in it: searching one's own mail for another recipient would tell who else
        got it (a Bcc). Costs: ``Repository.search_messages``."""
        before = decode_cursor(cursor) if cursor else None
        if not all(_within(caller, match) for match in search.recipients):
            return Page([], None)
        search = replace(search, recipients=search.recipients + scope_of(caller))
        found = await self.repository.search_messages(search, before_id=before, limit=limit + 1)
        more = len(found) > limit
        found = found[:limit]
        return Page(found, encode_cursor(found[-1].id) if more else None)

    async def open_copy(self, caller: Principal, message_id: str) -> tuple[MessageRecord, Copy]:
        """The message's raw copy, opened, if ``caller`` may see it and it is still kept:
        ``Refused(410)`` once it is deleted, purged, or finished and no longer kept, and for a
        scoped token whose every recipient's copy was deleted."""
        record = await self.visible(caller, message_id)
        if record.status in COPY_GONE:
            raise Refused(410, f"the message's copy is gone: it is {record.status}")
        mine = [r for r in record.recipients if caller.covers(r.address)]
        if not caller.sees_everything and all(r.status in RECIPIENT_GONE for r in mine):
            raise Refused(410, "your copy of the message was deleted")
        try:
            copy = await self.store.open(message_id)
        except FileNotFoundError:
            if record.status not in (
                MessageStatus.DELIVERED,
                MessageStatus.PARTIALLY_DELIVERED,
                MessageStatus.BOUNCED,
            ):  # its state still needs the copy: worth a look
                log.warning(
                    "%s is %s but its raw copy is missing",
                    message_id,
                    record.status,
                    extra={"queue_id": message_id},
                )
            raise Refused(
                410, f"the message's copy is no longer kept (it is {record.status})"
            ) from None
        return record, copy

    async def preview(self, caller: Principal, message_id: str) -> mime.Preview:
        """The safe rendering of the message (``moat.mime.preview``); 410 as ``open_copy``."""
        _, copy = await self.open_copy(caller, message_id)
        raw = await copy.read_all()
        # Up to the size limit (25 MB): parsed in a thread, the event loop keeps serving.
        return await asyncio.to_thread(mime.preview, raw)

    async def release(
        self,
        caller: Principal,
        message_id: str,
        recipients: Sequence[str] | None = None,
        *,
        rescan: bool = False,
    ) -> Done:
        """Let held recipients go (default: every held recipient the caller may act for).
        Released mail goes to delivery without a rescan, or with ``rescan`` is judged again
        (and may be held again). A release of spam counts as "not spam" feedback. Releasing
        what is no longer held answers 409: a second release never delivers twice."""
        record = await self.visible(caller, message_id)
        if not caller.may_change:
            raise Refused(403, "a reader token cannot change anything")
        chosen = self._chosen(caller, record, recipients)
        if not may_release(caller, record):
            raise Refused(
                403,
                f"{record.verdict} quarantine is released by an administrator; ask for it "
                f"with POST /v1/messages/{message_id}/request-release",
            )
        result = await self.repository.release_held(message_id, chosen, caller.actor, rescan=rescan)
        self._check(result)
        detail = ""
        try:
            if rescan:
                await self.broker.publish(SCAN, ScanRequest(message_id=message_id))
                await self.repository.mark_queued([message_id])
            else:
                await self.broker.publish(
                    DELIVER, DeliveryRequest(message_id=message_id, attempt=record.attempts)
                )
        except PublishError as exc:
            # Recorded all the same: the recovery sweeps send it on once the broker is back.
            log.warning(
                "release of %s recorded, not yet published: %s",
                message_id,
                exc,
                extra={"queue_id": message_id},
            )
            detail = "recorded; it goes on once the broker is reachable again"
        if record.verdict == VerdictName.SPAM and not rescan:
            await self.repository.record_feedback(message_id, "ham", "release")
        action = "rescanned" if rescan else "released"
        await self.audit.record(caller, action, message_id, ", ".join(result.recipients))
        log.info(
            "%s %s by %s: %s",
            message_id,
            action,
            caller.actor,
            ", ".join(result.recipients),
            extra={"queue_id": message_id},
        )
        assert result.status is not None
        return Done(message_id, action, result.recipients, result.status, detail)

    async def delete(
        self, caller: Principal, message_id: str, recipients: Sequence[str] | None = None
    ) -> Done:
        """Delete held mail (default: every held recipient the caller may act for). Once no
        recipient is held any more the message is ``deleted``: its record stays, its raw copy
        goes. A failed message can be deleted by an administrator."""
        record = await self.visible(caller, message_id)
        if not caller.may_change:
            raise Refused(403, "a reader token cannot change anything")
        if record.status == MessageStatus.FAILED:
            if not caller.is_admin:
                raise Refused(403, "a failed message is deleted by an administrator")
            chosen: list[str] = []
        else:
            chosen = self._chosen(caller, record, recipients)
        result = await self.repository.delete_held(message_id, chosen, caller.actor)
        self._check(result)
        if result.status == MessageStatus.DELETED:
            await self.store.delete(message_id)
        await self.audit.record(caller, "deleted", message_id, ", ".join(result.recipients))
        assert result.status is not None
        return Done(message_id, "deleted", result.recipients, result.status)

    async def bulk(self, caller: Principal, action: str, ids: Sequence[str]) -> list[BulkOutcome]:
        """Release or delete (``action``) each message of ``ids`` as one call of
        ``release``/``delete`` would; one outcome per id, in the given order. An id given
        twice is done once (the second answers ``conflict``). A few run at once, so their
        database steps share transactions."""
        limit = asyncio.Semaphore(8)

        async def one(message_id: str) -> BulkOutcome:
            async with limit:
                try:
                    if action == "release":
                        done = await self.release(caller, message_id)
                    else:
                        done = await self.delete(caller, message_id)
                except Refused as refused:
                    outcome = _OUTCOMES.get(refused.status, "conflict")
                    return BulkOutcome(message_id, outcome, refused.detail)
            detail = f"{', '.join(done.recipients)}; the message is {done.status}"
            return BulkOutcome(message_id, done.action, f"{detail}. {done.detail}".strip(" ."))

        first: dict[str, Coroutine[Any, Any, BulkOutcome]] = {}
        for message_id in ids:
            if message_id not in first:
                first[message_id] = one(message_id)
        outcomes = dict(zip(first, await asyncio.gather(*first.values()), strict=True))
        seen: set[str] = set()
        results = []
        for message_id in ids:
            if message_id in seen:
                results.append(BulkOutcome(message_id, "conflict", "listed twice: done once"))
                continue
            seen.add(message_id)
            results.append(outcomes[message_id])
        return results

    async def request_release(
        self, caller: Principal, message_id: str, reason: str
    ) -> list[ReleaseRequestRecord]:
        """A recipient asks an administrator to release what they may not release themselves
        (virus or policy quarantine): a pending request per held recipient of theirs.
        ``Refused(409)`` when nothing is held for them, when they may release it themselves,
        and when their request is pending already."""
        if caller.role not in (Role.USER, Role.DOMAIN):
            raise Refused(
                403,
                "a release request is made with a user or domain token; an admin releases",
            )
        record = await self.visible(caller, message_id)
        held = held_for(caller, record)
        if not held:
            raise Refused(409, f"nothing of it is held in quarantine for you ({record.status})")
        if may_release(caller, record):
            raise Refused(
                409, f"you may release it yourself: POST /v1/messages/{message_id}/release"
            )
        made, pending = await self.repository.request_release(
            message_id, held, caller.actor, reason
        )
        if not made:
            raise Refused(409, f"a release request is pending already for {', '.join(pending)}")
        await self.audit.record(
            caller, "release_requested", message_id, f"{', '.join(r.recipient for r in made)}"
        )
        return made

    async def decide(
        self, caller: Principal, request_id: str, approve: bool, note: str = ""
    ) -> Decision:
        """An administrator approves (the release is done as that administrator, for the
        request's recipient only) or refuses a pending request; the requester is told by
        mail either way. ``Refused(404)`` for an unknown request, 409 for one decided
        already, or one whose release cannot be done (it stays pending then)."""
        if not caller.is_admin:
            raise Refused(403, "release requests are decided by an admin")
        status = "approved" if approve else "refused"
        found = []
        if request_id.isalnum():
            found = await self.repository.release_requests(request_id=request_id, limit=1)
        if not found:
            raise Refused(404, f"no release request {request_id!r}")
        if found[0].status != "pending":
            raise Refused(409, f"the request was {found[0].status} already")
        if approve:
            record = await self.visible(caller, found[0].message_id)
            if found[0].recipient.lower() not in {a.lower() for a in held_for(caller, record)}:
                raise Refused(
                    409,
                    f"nothing is held for {found[0].recipient} any more ({record.status}); "
                    "refuse the request to close it",
                )
        # Taking the request out of pending first makes the decision once: a second approval
        # or a refusal at the same time finds it decided.
        request = await self.repository.decide_release_request(request_id, status, caller.actor)
        if request is None:
            raise Refused(409, "the request was decided meanwhile")
        done = None
        if approve:
            try:
                done = await self.release(caller, request.message_id, [request.recipient])
            except Refused as refused:
                # Released or deleted by someone else in between: back to pending, to refuse.
                await self.repository.decide_release_request(
                    request_id, "pending", None, expected="approved", why=refused.detail
                )
                raise Refused(409, f"the release could not be done: {refused.detail}") from None
        await self.audit.record(
            caller,
            f"release_{status}",
            request.message_id,
            f"request {request.id} for {request.recipient}" + (f": {note}" if note else ""),
        )
        notified = await self._notify(request, approve, note)
        return Decision(request, done, notified)

    async def _notify(self, request: ReleaseRequestRecord, approved: bool, note: str) -> bool:
        """Tell the requester (the recipient) what became of their request."""
        subject = request.subject or "(no subject)"
        if approved:
            title = f"Released: {subject}"
            outcome = "was approved: the message is on its way to you."
        else:
            title = f"Not released: {subject}"
            outcome = "was refused: the message stays in quarantine."
        lines = [
            f"Your request to release this message {outcome}",
            "",
            f"  Subject: {subject}",
            f"  Message: {request.message_id}",
            f"  Asked:   {request.created_at:%Y-%m-%d %H:%M} UTC",
        ]
        if note:
            lines += ["", f"Note from the administrator: {mime.decoded(note)}"]
        try:
            await send_notice(
                self.repository,
                self.store,
                self.broker,
                self.settings.smtp.hostname,
                to=request.recipient,
                subject=mime.decoded(title),
                text="\n".join(lines) + "\n",
            )
        except Exception as exc:  # the decision stands; the notice is what failed
            log.warning("release request %s: notice not sent: %r", request.id, exc)
            return False
        return True

    def _chosen(
        self, caller: Principal, record: MessageRecord, recipients: Sequence[str] | None
    ) -> list[str]:
        held = held_for(caller, record)
        if recipients is None:
            if not held:
                raise Refused(409, f"nothing of it is held in quarantine (it is {record.status})")
            return held
        by_address = {address.lower(): address for address in held}
        unknown = [a for a in recipients if a.lower() not in by_address]
        if unknown:
            raise Refused(
                409 if not held else 422,
                f"not held recipients of this message that you may act for: {', '.join(unknown)}",
            )
        return [by_address[a.lower()] for a in recipients]

    @staticmethod
    def _check(result: HoldResult) -> None:
        if not result.done:
            raise Refused(409, f"nothing was done: {result.why_not}")
