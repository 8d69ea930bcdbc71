"""``/v1/webhooks``: administrators register URLs that receive signed JSON events, and see
how their deliveries went (``services/api/webhooks.py`` sends them)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, Field, field_validator

from services.api.deps import AdminDep, AuditDep, StaffDep
from services.api.models import UtcDateTime
from services.api.webhooks import (
    EVENT_TYPES,
    DeliveryRecord,
    EventType,
    WebhookRecord,
    Webhooks,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no valid token", **PROBLEM},
    403: {"description": "not an administrator", **PROBLEM},
    422: {"description": "the request makes no sense", **PROBLEM},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such webhook", **PROBLEM}}


def get_webhooks(request: Request) -> Webhooks:
    hooks: Webhooks = request.app.state.webhooks
    return hooks


WebhooksDep = Annotated[Webhooks, Depends(get_webhooks)]


class WebhookCreate(BaseModel):
    url: str = Field(max_length=2000, description="where to POST events (https://, or http://)")
    events: list[EventType] = Field(
        default=list(EVENT_TYPES), min_length=1, description="the events it receives"
    )

    @field_validator("url")
    @classmethod
    def _web_address(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep or scheme.lower() not in ("http", "https") or not rest.strip("/"):
            raise ValueError("an http:// or https:// URL")
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("no spaces or control characters in a URL")
        return value


class WebhookPublic(BaseModel):
    id: str
    url: str
    events: list[str]
    active: bool
    created_at: UtcDateTime
    created_by: str


class WebhookCreated(WebhookPublic):
    secret: str = Field(description="signs every POST (Moat-Signature); shown this once")


class WebhookList(BaseModel):
    count: int
    webhooks: list[WebhookPublic]


class DeliveryPublic(BaseModel):
    id: int = Field(description="this delivery (the Moat-Delivery header)")
    event: str
    event_id: str = Field(description="the event's id in the body; the same on every retry")
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    created_at: UtcDateTime
    next_attempt_at: UtcDateTime | None
    last_error: str | None
    delivered_at: UtcDateTime | None


class DeliveryList(BaseModel):
    count: int
    deliveries: list[DeliveryPublic]


def _public(record: WebhookRecord) -> WebhookPublic:
    return WebhookPublic.model_validate(record.__dict__)


def _delivery(record: DeliveryRecord) -> DeliveryPublic:
    return DeliveryPublic.model_validate(record.__dict__)


@router.post(
    "",
    response_model=WebhookCreated,
    status_code=status.HTTP_201_CREATED,
    responses=ERRORS,
)
async def create_webhook(
    body: WebhookCreate, caller: AdminDep, hooks: WebhooksDep, audit: AuditDep
) -> WebhookCreated:
    """Register a URL. The response carries the signing secret, once."""
    record, secret = await hooks.create(body.url, list(body.events), caller.actor)
    await audit.record(
        caller, "webhook_created", None, f"{record.id} {record.url} {','.join(record.events)}"
    )
    return WebhookCreated(**_public(record).model_dump(), secret=secret)


@router.get("", response_model=WebhookList, responses=ERRORS)
async def list_webhooks(caller: StaffDep, hooks: WebhooksDep) -> WebhookList:
    records = await hooks.registered()
    return WebhookList(count=len(records), webhooks=[_public(r) for r in records])


@router.delete("/{webhook_id}", response_model=WebhookPublic, responses={**ERRORS, **NOT_FOUND})
async def delete_webhook(
    webhook_id: str, caller: AdminDep, hooks: WebhooksDep, audit: AuditDep
) -> WebhookPublic:
    """Delete a webhook: nothing more is sent to it, and its deliveries are forgotten."""
    record = await hooks.remove(webhook_id) if webhook_id.isalnum() else None
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no webhook {webhook_id!r}")
    await audit.record(caller, "webhook_deleted", None, f"{record.id} {record.url}")
    return _public(record)


@router.get(
    "/{webhook_id}/deliveries", response_model=DeliveryList, responses={**ERRORS, **NOT_FOUND}
)
async def list_deliveries(
    webhook_id: str,
    caller: StaffDep,
    hooks: WebhooksDep,
    status_: Annotated[
        Literal["pending", "delivered", "failed"] | None, Query(alias="status")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeliveryList:
    """The webhook's events, newest first: delivered, waiting for a retry (with the last
    error), or failed for good."""
    if not webhook_id.isalnum() or await hooks.get(webhook_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no webhook {webhook_id!r}")
    records = await hooks.deliveries(webhook_id, status_, limit)
    return DeliveryList(count=len(records), deliveries=[_delivery(r) for r in records])
