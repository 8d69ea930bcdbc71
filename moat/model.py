"""The message model shared by every service: states, queue bodies, findings and verdicts."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from ulid import ULID

# The ids' randomness, read from the kernel a few hundred ids at a time. os.urandom releases the
# GIL for its system call, and on ingress's event loop, with the spool's and the database's
# threads busy, getting it back cost 0.24 ms a message (cProfile, 20 sessions): a tenth of
# ingress's CPU time per message, for 10 bytes. The bytes are the same kernel randomness.
_RANDOMNESS = 10  # bytes of a ULID after its 48-bit timestamp
_POOL_SIZE = 4096
_random_pool = bytearray()
_random_lock = threading.Lock()


def _reset_random_pool() -> None:
    # A child made by fork must not hand out its parent's next ids.
    del _random_pool[:]


os.register_at_fork(after_in_child=_reset_random_pool)


def _random_bytes() -> bytes:
    with _random_lock:
        if len(_random_pool) < _RANDOMNESS:
            _random_pool[:] = os.urandom(_POOL_SIZE)
        taken = bytes(_random_pool[-_RANDOMNESS:])
        del _random_pool[-_RANDOMNESS:]
        return taken


def new_message_id() -> str:
    """A unique id that sorts by arrival time (a ULID, 26 characters)."""
    milliseconds = time.time_ns() // 1_000_000
    return str(ULID.from_bytes(milliseconds.to_bytes(6, "big") + _random_bytes()))


def utcnow() -> datetime:
    return datetime.now(UTC)


class MessageStatus(StrEnum):
    """The life of a message. Which state may follow which, and what each means, is the
    table in ``moat/lifecycle.py``."""

    RECEIVED = "received"  # stored; the publish for scanning is not yet known to be confirmed
    QUEUED = "queued"  # published for scanning, confirmed by the broker
    DELIVERING = "delivering"  # verdict says deliver; handed to delivery
    DEFERRED = "deferred"  # some recipients wait for a retry
    DELIVERED = "delivered"
    PARTIALLY_DELIVERED = "partially_delivered"  # some recipients delivered, the others bounced
    BOUNCED = "bounced"
    QUARANTINED = "quarantined"
    RELEASED = "released"  # let out of quarantine; handed to delivery
    FAILED = "failed"
    REJECTED = "rejected"
    DELETED = "deleted"  # deleted from quarantine by an administrator; the record is kept
    PURGED = "purged"  # its raw copy removed by retention; the record is kept


class RecipientStatus(StrEnum):
    PENDING = "pending"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    QUARANTINED = "quarantined"
    DELETED = "deleted"
    PURGED = "purged"


class Category(StrEnum):
    """What a finding says about a message."""

    VIRUS = "virus"
    SPAM = "spam"
    POLICY = "policy"
    INFO = "info"
    FAILURE = "failure"  # the check could not run: never read as "clean"


class Finding(BaseModel):
    """One result of one check, kept with the verdict so every decision can be explained."""

    check: str
    symbol: str
    category: Category
    score: float = 0.0
    detail: str = ""
    elapsed_ms: float = 0.0
    probability: float | None = None  # a classifier's estimate that the message is spam


class VerdictName(StrEnum):
    CLEAN = "clean"
    SPAM = "spam"
    VIRUS = "virus"
    POLICY = "policy"


class Action(StrEnum):
    DELIVER = "deliver"
    QUARANTINE = "quarantine"


class Verdict(BaseModel):
    verdict: VerdictName
    action: Action
    score: float
    findings: list[Finding]


# --- Queue bodies: small versioned JSON, never the mail itself. -------------------------------


class MessageEnvelope(BaseModel):
    """The SMTP envelope: who sent a message from where, to whom."""

    model_config = ConfigDict(frozen=True)

    mail_from: str = ""  # "" is the null sender
    rcpt_tos: tuple[str, ...] = ()
    client_address: str = ""  # the connecting client's IP address
    helo: str = ""


class ScanRequest(BaseModel):
    v: Literal[1] = 1
    kind: Literal["scan"] = "scan"
    message_id: str
    # Carried so the scanner needs no database read; a republished request may lack it.
    envelope: MessageEnvelope | None = None


class DeliveryRequest(BaseModel):
    v: Literal[1] = 1
    kind: Literal["deliver"] = "deliver"
    message_id: str
    # Which attempt this request is for; a request for an attempt already made is stale.
    attempt: int = 0


QueueBody = Annotated[ScanRequest | DeliveryRequest, Field(discriminator="kind")]
queue_body_adapter: TypeAdapter[ScanRequest | DeliveryRequest] = TypeAdapter(QueueBody)


def encode_body(body: ScanRequest | DeliveryRequest) -> bytes:
    return body.model_dump_json().encode()


def decode_body(data: bytes) -> ScanRequest | DeliveryRequest:
    return queue_body_adapter.validate_json(data)
