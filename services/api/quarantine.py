"""What can be done to quarantined mail, and who may: the service layer that the REST routes,
the web page and the one-click links of digests all call, so that an action means the same
wherever it is asked for.

Who may release what (what users of these gateways ask for most): a recipient (a user or
domain token, or a digest link) may release their own *spam*; virus and policy quarantine is
released by an administrator only, or on a recipient's request that an administrator approves.
A user acts on their own recipients of a message only: releasing a message to Bob and Carol
with Bob's token lets Bob's copy go, and Carol's stays held.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from moat.broker import Broker, PublishError
from moat.model import DeliveryRequest, MessageStatus, RecipientStatus, ScanRequest, VerdictName
from moat.repository import HoldResult, MessageRecord, Repository
from moat.settings import Settings
from moat.spool import MessageStore
from moat.topology import DELIVER, SCAN
from services.api.audit import AuditLog
from services.api.auth import Principal

log = logging.getLogger("api")

# Verdicts whose quarantine a recipient may not release alone.
ADMIN_ONLY_RELEASE = frozenset({VerdictName.VIRUS, VerdictName.POLICY})


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
            record = await self.repository.get(message_id)
        if record is None or not caller.sees(r.address for r in record.recipients):
            raise Refused(404, f"no message {message_id!r}")
        return record

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
            log.warning("release of %s recorded, not yet published: %s", message_id, exc)
            detail = "recorded; it goes on once the broker is reachable again"
        if record.verdict == VerdictName.SPAM and not rescan:
            await self.repository.record_feedback(message_id, "ham", "release")
        action = "rescanned" if rescan else "released"
        await self.audit.record(caller, action, message_id, ", ".join(result.recipients))
        log.info("%s %s by %s: %s", message_id, action, caller.actor, ", ".join(result.recipients))
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
