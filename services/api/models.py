"""What the API shows: public shapes of a message, separate from the database records."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from moat.model import Finding, MessageStatus, RecipientStatus


class RecipientPublic(BaseModel):
    address: str
    status: RecipientStatus
    attempts: int
    remote_host: str | None
    reply: str | None
    updated_at: datetime


class VerdictPublic(BaseModel):
    verdict: str
    score: float
    findings: list[Finding]


class EventPublic(BaseModel):
    at: datetime
    service: str
    event: str
    detail: str


class MessagePublic(BaseModel):
    id: str
    status: MessageStatus
    mail_from: str
    client_address: str
    helo: str
    size: int
    received_at: datetime
    updated_at: datetime
    verdict: VerdictPublic | None
    attempts: int
    next_attempt_at: datetime | None
    bounce_of: str | None
    reason: str | None
    recipients: list[RecipientPublic]
    events: list[EventPublic]


class Health(BaseModel):
    status: str
