"""The life of a message and of each of its recipients: every state and every allowed
transition, in one table each. Every state change in every service is checked against these
tables, and the database update that makes it is conditional on the current state
(``UPDATE ... WHERE status IN sources(target)``), so a late or duplicate event can never
overwrite a state that moved on (a mark-failed arriving after the delivery, say).

Adding a state means adding one row here (and a line in docs/architecture.md).

Messages::

    received ─► queued ─► delivering ─► delivered | partially_delivered | bounced
       │          │            └──► deferred ─► (retry) ─► delivered ... | deferred
       │          └──► quarantined ─► released ─► (delivery, as delivering)
       │                  │  ▲        └──► quarantined (some recipients still held)
       │                  │  └── (rescan) received
       │                  └──► deleted | purged
       └──► rejected (the sender got 451)
    received, queued, delivering, deferred, released ─► failed ─► received | delivering
                                                                  (an administrator's retry)

Recipients::

    pending ─► delivered | bounced | deferred ─► delivered | bounced | deferred
       └──► quarantined ─► pending (released) | deleted | purged
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from moat.model import MessageStatus as M
from moat.model import RecipientStatus as R


@dataclass(frozen=True)
class State:
    to: frozenset[M]  # the states a message may move to from this one
    keeps_copy: bool  # whether the raw message in the spool is still needed
    meaning: str


def _state(meaning: str, *to: M, keeps_copy: bool = True) -> State:
    return State(frozenset(to), keeps_copy, meaning)


# The outcomes of one delivery attempt, reachable from every state delivery works on.
_ATTEMPT_OUTCOMES = (M.DEFERRED, M.DELIVERED, M.PARTIALLY_DELIVERED, M.BOUNCED, M.FAILED)

MESSAGE_STATES: Mapping[M, State] = {
    M.RECEIVED: _state(
        "stored; its publish for scanning not yet known to be confirmed",
        M.QUEUED,
        M.DELIVERING,
        M.QUARANTINED,
        M.REJECTED,
        M.FAILED,
    ),
    M.QUEUED: _state(
        "published for scanning, confirmed by the broker",
        M.DELIVERING,
        M.QUARANTINED,
        M.FAILED,
    ),
    M.DELIVERING: _state("the verdict says deliver; handed to delivery", *_ATTEMPT_OUTCOMES),
    M.DEFERRED: _state("some recipients wait for a retry", *_ATTEMPT_OUTCOMES, M.QUARANTINED),
    M.QUARANTINED: _state(
        "held: spam, virus or policy; waits for review (received again: a rescan)",
        M.RELEASED,
        M.RECEIVED,
        M.DELETED,
        M.PURGED,
    ),
    M.RELEASED: _state(
        "released from quarantine (all or some recipients); handed to delivery",
        *_ATTEMPT_OUTCOMES,
        M.QUARANTINED,  # delivery done with the released ones, others still held
    ),
    M.FAILED: _state(
        "dead-lettered: a bug or a poison message; an administrator may retry it",
        M.RECEIVED,
        M.DELIVERING,
        M.DELETED,
        M.PURGED,
    ),
    M.DELIVERED: _state("every recipient delivered", keeps_copy=False),
    M.PARTIALLY_DELIVERED: _state(
        "some recipients delivered, the others bounced", keeps_copy=False
    ),
    M.BOUNCED: _state("every recipient bounced (DSN sent if due)", keeps_copy=False),
    M.REJECTED: _state("the sender was told 451; never processed", keeps_copy=False),
    M.DELETED: _state("deleted by an administrator; the record is kept", keeps_copy=False),
    M.PURGED: _state("its raw copy removed by retention; the record is kept", keeps_copy=False),
}

# How a message comes into being: ingress stores it as received; our own DSNs are created
# ready for delivery.
INITIAL: frozenset[M] = frozenset({M.RECEIVED, M.DELIVERING})

RECIPIENT_TRANSITIONS: Mapping[R, frozenset[R]] = {
    R.PENDING: frozenset({R.DELIVERED, R.DEFERRED, R.BOUNCED, R.QUARANTINED}),
    R.DEFERRED: frozenset({R.DELIVERED, R.DEFERRED, R.BOUNCED}),
    R.QUARANTINED: frozenset({R.PENDING, R.DELETED, R.PURGED}),  # pending: released
    R.DELIVERED: frozenset(),
    R.BOUNCED: frozenset(),
    R.DELETED: frozenset(),
    R.PURGED: frozenset(),
}

# When a message enters one of these states, its recipients that may follow do (the quarantine
# holds all of a message's recipients; a release lets them go).
RECIPIENTS_FOLLOW: Mapping[M, R] = {
    M.QUARANTINED: R.QUARANTINED,
    M.RELEASED: R.PENDING,  # a release of every recipient; a partial one moves its own
    M.RECEIVED: R.PENDING,  # a rescan: held again or not, the new verdict says
    M.DELETED: R.DELETED,
    M.PURGED: R.PURGED,
}

TERMINAL: frozenset[M] = frozenset(s for s, state in MESSAGE_STATES.items() if not state.to)
# Where no raw copy is needed any more: the spool file can go.
NO_COPY_NEEDED: frozenset[M] = frozenset(
    s for s, state in MESSAGE_STATES.items() if not state.keeps_copy
)
# What the scanner may judge, and what delivery may work on.
SCANNABLE: frozenset[M] = frozenset({M.RECEIVED, M.QUEUED})
DELIVERABLE: frozenset[M] = frozenset(
    s for s, state in MESSAGE_STATES.items() if set(_ATTEMPT_OUTCOMES) <= state.to
)
# Recipients delivery still has to try, and those it is done with.
RECIPIENT_TO_DELIVER: frozenset[R] = frozenset({R.PENDING, R.DEFERRED})
RECIPIENT_FINAL: frozenset[R] = frozenset(s for s, to in RECIPIENT_TRANSITIONS.items() if not to)


class IllegalTransition(Exception):
    def __init__(self, what: str, current: str, target: str) -> None:
        super().__init__(f"{what}: {current} -> {target} is not an allowed transition")
        self.current = current
        self.target = target


def allowed(current: M, target: M) -> bool:
    return target in MESSAGE_STATES[current].to


def sources(target: M) -> frozenset[M]:
    """Every state from which a message may move to ``target``."""
    return frozenset(s for s, state in MESSAGE_STATES.items() if target in state.to)


def recipient_allowed(current: R, target: R) -> bool:
    return target in RECIPIENT_TRANSITIONS[current]


def recipient_sources(target: R) -> frozenset[R]:
    return frozenset(s for s, to in RECIPIENT_TRANSITIONS.items() if target in to)


def check(message_id: str, current: M, target: M) -> None:
    """Raise ``IllegalTransition`` unless ``current -> target`` is in the table."""
    if not allowed(current, target):
        raise IllegalTransition(message_id, current, target)
