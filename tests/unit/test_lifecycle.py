"""The lifecycle table: every allowed transition, a sample of forbidden ones, and the table's
own consistency; then the repository refusing an illegal one on a real database."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from moat import lifecycle
from moat.db import create_engine, db_now
from moat.lifecycle import MESSAGE_STATES, RECIPIENT_TRANSITIONS, IllegalTransition
from moat.migrate import upgrade
from moat.model import MessageStatus as M
from moat.model import RecipientStatus as R
from moat.repository import AttemptResult, NewMessage, RecipientOutcome, Repository

ALLOWED = {
    M.RECEIVED: {M.QUEUED, M.DELIVERING, M.QUARANTINED, M.REJECTED, M.FAILED},
    M.QUEUED: {M.DELIVERING, M.QUARANTINED, M.FAILED},
    M.DELIVERING: {M.DEFERRED, M.DELIVERED, M.PARTIALLY_DELIVERED, M.BOUNCED, M.FAILED},
    M.DEFERRED: {
        M.DEFERRED,
        M.DELIVERED,
        M.PARTIALLY_DELIVERED,
        M.BOUNCED,
        M.FAILED,
        M.QUARANTINED,
    },
    M.RELEASED: {
        M.DEFERRED,
        M.DELIVERED,
        M.PARTIALLY_DELIVERED,
        M.BOUNCED,
        M.FAILED,
        M.QUARANTINED,
    },
    M.QUARANTINED: {M.RELEASED, M.RECEIVED, M.DELETED, M.PURGED},
    M.FAILED: {M.RECEIVED, M.DELIVERING, M.DELETED, M.PURGED},
    M.DELIVERED: set(),
    M.PARTIALLY_DELIVERED: set(),
    M.BOUNCED: set(),
    M.REJECTED: set(),
    M.DELETED: set(),
    M.PURGED: set(),
}


def test_every_state_has_a_row() -> None:
    assert set(MESSAGE_STATES) == set(M)
    assert set(RECIPIENT_TRANSITIONS) == set(R)


@pytest.mark.parametrize(
    ("current", "target"),
    [(current, target) for current, targets in ALLOWED.items() for target in targets],
)
def test_allowed_transitions(current: M, target: M) -> None:
    assert lifecycle.allowed(current, target)
    assert current in lifecycle.sources(target)
    lifecycle.check("x", current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [(current, target) for current in M for target in M if target not in ALLOWED[current]],
)
def test_everything_else_is_forbidden(current: M, target: M) -> None:
    assert not lifecycle.allowed(current, target)
    with pytest.raises(IllegalTransition):
        lifecycle.check("x", current, target)


def test_what_the_services_rely_on() -> None:
    # A finished message never changes again: a late mark-failed cannot overwrite it.
    for done in (M.DELIVERED, M.PARTIALLY_DELIVERED, M.BOUNCED, M.REJECTED):
        assert done in lifecycle.TERMINAL
        assert done not in lifecycle.sources(M.FAILED)
        assert done in lifecycle.NO_COPY_NEEDED
    # Held mail keeps its raw copy until it is released, deleted or purged.
    for held in (M.QUARANTINED, M.FAILED, M.RECEIVED, M.QUEUED, M.DEFERRED, M.RELEASED):
        assert held not in lifecycle.NO_COPY_NEEDED
    # The scanner's verdict may send a scannable message either way.
    for verdict_status in (M.DELIVERING, M.QUARANTINED):
        assert lifecycle.sources(verdict_status) >= lifecycle.SCANNABLE
    assert {M.DELIVERING, M.DEFERRED, M.RELEASED} == lifecycle.DELIVERABLE
    assert {M.RECEIVED, M.DELIVERING} >= lifecycle.INITIAL


@pytest.mark.parametrize(
    ("current", "target", "ok"),
    [
        (R.PENDING, R.DELIVERED, True),
        (R.PENDING, R.QUARANTINED, True),
        (R.DEFERRED, R.DEFERRED, True),
        (R.DEFERRED, R.BOUNCED, True),
        (R.QUARANTINED, R.PENDING, True),
        (R.QUARANTINED, R.PURGED, True),
        (R.DELIVERED, R.DEFERRED, False),
        (R.BOUNCED, R.DELIVERED, False),
        (R.QUARANTINED, R.DELIVERED, False),
        (R.DEFERRED, R.QUARANTINED, False),
        (R.PURGED, R.PENDING, False),
    ],
)
def test_recipient_transitions(current: R, target: R, ok: bool) -> None:
    assert lifecycle.recipient_allowed(current, target) is ok


def test_recipients_follow_only_where_they_may() -> None:
    for message_state, recipient_state in lifecycle.RECIPIENTS_FOLLOW.items():
        assert lifecycle.recipient_sources(recipient_state), (message_state, recipient_state)


# --- the repository applies the table (a real SQLite database) ---------------------------------


@pytest.fixture
def repository(tmp_path: Path) -> Repository:
    url = f"sqlite+aiosqlite:///{tmp_path / 'moat.db'}"
    upgrade(url)
    return Repository(create_engine(url))


def test_a_late_mark_failed_never_overwrites_a_delivered_message(
    repository: Repository, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        try:
            await repository.record_received(
                NewMessage("01TESTDELIVERED0000000000A", "a@x.test", ["b@example.test"], 10)
            )
            await repository.mark_queued(["01TESTDELIVERED0000000000A"])
            await repository.writes.submit(
                "status", ("01TESTDELIVERED0000000000A", M.DELIVERING, "t", "t", "")
            )
            record = await repository.claim_for_delivery(
                "01TESTDELIVERED0000000000A", 0, timedelta(seconds=60)
            )
            assert record is not None
            [rcpt] = record.recipients
            assert await repository.record_attempt(
                AttemptResult(
                    record.id,
                    [RecipientOutcome(rcpt.id, R.DELIVERED, "250 ok")],
                    M.DELIVERED,
                    None,
                    "delivered",
                )
            )
            # The late event is refused and logged; the record stays delivered.
            assert not await repository.mark_failed(record.id, "scanner", "late")
            assert not await repository.record_dead_letter(record.id, "late")
            again = await repository.get(record.id)
            assert again is not None and again.status == M.DELIVERED
            assert again.reason is None
            assert [e.event for e in again.events].count("failed") == 0
            # A second attempt record for the same message is refused too.
            assert not await repository.record_attempt(
                AttemptResult(record.id, [], M.DEFERRED, None, "stale")
            )
        finally:
            await repository.close()

    asyncio.run(scenario())
    assert "refused delivered -> failed" in caplog.text


def test_quarantine_holds_the_recipients(repository: Repository) -> None:
    from moat.model import Action, Verdict, VerdictName

    async def scenario() -> None:
        try:
            message_id = "01TESTQUARANTINED000000000"
            await repository.record_received(
                NewMessage(message_id, "a@x.test", ["b@example.test", "c@example.test"], 10)
            )
            verdict = Verdict(
                verdict=VerdictName.SPAM, action=Action.QUARANTINE, score=9.0, findings=[]
            )
            assert await repository.record_verdict(message_id, verdict, M.QUARANTINED)
            record = await repository.get(message_id)
            assert record is not None
            assert record.status == M.QUARANTINED
            assert {r.status for r in record.recipients} == {R.QUARANTINED}
            # Only what the table allows: purge works, delivering it does not.
            assert not await repository.transition(message_id, M.DELIVERED, "t", "t", "")
            assert await repository.transition(message_id, M.PURGED, "retention", "purged", "")
            record = await repository.get(message_id)
            assert record is not None
            assert {r.status for r in record.recipients} == {R.PURGED}
        finally:
            await repository.close()

    asyncio.run(scenario())


def test_a_batch_of_attempts_is_recorded_together(repository: Repository) -> None:
    """Concurrent steps share one transaction (bulk statements): the state conditions must
    work there too."""
    ids = [f"01TESTBATCH{n:015d}" for n in range(3)]

    async def scenario() -> None:
        try:
            for message_id in ids:
                await repository.record_received(
                    NewMessage(message_id, "a@x.test", ["b@example.test"], 10)
                )
                await repository.transition(message_id, M.DELIVERING, "t", "t", "")
            claims = await asyncio.gather(
                *(repository.claim_for_delivery(i, 0, timedelta(seconds=60)) for i in ids)
            )
            results = await asyncio.gather(
                *(
                    repository.record_attempt(
                        AttemptResult(
                            record.id,
                            [RecipientOutcome(record.recipients[0].id, R.DELIVERED, "250 ok")],
                            M.DELIVERED,
                            None,
                            "delivered",
                        )
                    )
                    for record in claims
                    if record is not None
                )
            )
            assert results == [True, True, True]
            for message_id in ids:
                record = await repository.get(message_id)
                assert record is not None and record.status == M.DELIVERED
                assert record.recipients[0].status == R.DELIVERED
        finally:
            await repository.close()

    asyncio.run(scenario())


def test_a_dead_letter_older_than_a_retry_does_not_undo_it(repository: Repository) -> None:
    # The consumer marks a poison message failed and the broker dead-letters its copy; the
    # administrator retries before the dead-letter sweep has looked at that copy. The sweep
    # must not fail the retried message again with the stale copy, yet a copy that died after
    # the retry (a crash loop on the retried message) is recorded.
    message_id = "01TESTRETRIED000000000000A"

    async def scenario() -> None:
        try:
            await repository.record_received(
                NewMessage(message_id, "a@x.test", ["b@example.test"], 10)
            )
            await repository.mark_queued([message_id])
            assert await repository.mark_failed(message_id, "scanner", "poison")
            died_at = db_now() - timedelta(seconds=1)
            assert await repository.retry_failed(message_id) == M.RECEIVED
            assert not await repository.record_dead_letter(message_id, "stale copy", died_at)
            record = await repository.get(message_id)
            assert record is not None and record.status == M.RECEIVED
            later = db_now() + timedelta(seconds=2)
            assert await repository.record_dead_letter(message_id, "died again", later)
            record = await repository.get(message_id)
            assert record is not None and record.status == M.FAILED
        finally:
            await repository.close()

    asyncio.run(scenario())
