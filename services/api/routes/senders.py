"""Allow and block lists: ``/v1/senders``, and ``POST /v1/messages/{id}/block-sender`` and
``.../allow-sender`` to list the envelope sender of a message one has in hand.

A rule is for one recipient address (``recipient``), one protected domain (``domain``) or,
with neither, everyone (global, admins only). Who may set which:

| token | its rules |
| --- | --- |
| admin | any |
| user | for its own address |
| domain | for its domain, or any address in it |
| reader | sees every rule, changes none (403) |

``GET`` lists the rules the caller may change (a reader: all). Which rule applies to a message,
and what the scanner and ingress do with it, is in ``moat/sender_rules.py`` and
docs/checks/sender_lists.md. Every change is audited.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response, status
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import and_, or_

from moat.addresses import is_mailbox
from moat.db import sender_rules
from moat.sender_rules import (
    RuleAction,
    ScopeKind,
    SenderRule,
    domain_of,
    normalise_sender,
)
from moat.settings import Settings
from services.api.auth import Principal, Role
from services.api.deps import (
    AuditDep,
    CallerDep,
    RepositoryDep,
    SenderRulesDep,
    SettingsDep,
    WriterDep,
    visible_message,
)
from services.api.models import UtcDateTime
from services.api.senders import list_message_sender

router = APIRouter(prefix="/v1/senders", tags=["senders"])
message_router = APIRouter(prefix="/v1/messages", tags=["senders"])

RULE_ID = r"^[0-9A-Za-z]{26}$"
# The shapes the schema can say; what it cannot (a protected domain, a token's scope) is 422
# or 403 from the route.
_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})+\.?"
SENDER_PATTERN = rf"^\s*<?(?:[^@\s<>]+@)?{_DOMAIN}>?\s*$"
ADDRESS_PATTERN = rf"^\s*[^@\s<>]+@{_DOMAIN}\s*$"
DOMAIN_PATTERN = rf"^\s*{_DOMAIN}\s*$"


class SenderRuleCreate(BaseModel):
    action: Literal["allow", "block"]
    sender: str = Field(
        max_length=320,
        pattern=SENDER_PATTERN,
        description="an address, or a domain (and its subdomains)",
    )
    recipient: str | None = Field(
        None, max_length=320, pattern=ADDRESS_PATTERN, description="a rule for this address"
    )
    domain: str | None = Field(
        None, max_length=255, pattern=DOMAIN_PATTERN, description="a rule for this domain"
    )
    note: str = Field("", max_length=500, description="why, for the people reading the list")

    @model_validator(mode="after")
    def _one_scope(self) -> SenderRuleCreate:
        if self.recipient is not None and self.domain is not None:
            raise ValueError("give recipient or domain (or neither, for a global rule), not both")
        return self


class SenderRulePublic(BaseModel):
    id: str
    action: Literal["allow", "block"]
    sender: str
    recipient: str | None = Field(description="the address the rule is for, if it is")
    domain: str | None = Field(description="the domain the rule is for, if it is")
    created_at: UtcDateTime = Field(description="when the rule was last set")
    created_by: str
    note: str


class SenderRuleList(BaseModel):
    count: int = Field(description="rules in this page")
    rules: list[SenderRulePublic]
    next: str | None = Field(description="the cursor of the next page; null on the last one")


class SenderFromMessage(BaseModel):
    whole_domain: bool = Field(False, description="list the sender's domain, not only its address")
    note: str = Field("", max_length=500)


class SenderRulesSet(BaseModel):
    count: int
    rules: list[SenderRulePublic]


def public(rule: SenderRule) -> SenderRulePublic:
    return SenderRulePublic(
        id=rule.id,
        action=rule.action.value,
        sender=rule.sender,
        recipient=rule.scope if rule.scope_kind == ScopeKind.RECIPIENT else None,
        domain=rule.scope if rule.scope_kind == ScopeKind.DOMAIN else None,
        created_at=rule.created_at,
        created_by=rule.created_by,
        note=rule.note,
    )


def may_manage(caller: Principal, kind: ScopeKind, scope: str) -> bool:
    """Whether ``caller`` may set or remove a rule of this scope."""
    if caller.is_admin:
        return True
    if caller.role == Role.USER:
        return kind == ScopeKind.RECIPIENT and scope == caller.scope
    if caller.role == Role.DOMAIN:
        if kind == ScopeKind.DOMAIN:
            return scope == caller.scope
        return kind == ScopeKind.RECIPIENT and domain_of(scope) == caller.scope
    return False


def visible_rules(caller: Principal) -> Any:
    """The SQL condition for the rules ``caller`` may see: those it may manage (staff: all)."""
    if caller.sees_everything:
        return None
    if caller.role == Role.USER:
        return and_(
            sender_rules.c.scope_kind == ScopeKind.RECIPIENT,
            sender_rules.c.scope == caller.scope,
        )
    domain = caller.scope or ""
    return or_(
        and_(sender_rules.c.scope_kind == ScopeKind.DOMAIN, sender_rules.c.scope == domain),
        and_(
            sender_rules.c.scope_kind == ScopeKind.RECIPIENT,
            sender_rules.c.scope.endswith(f"@{domain}", autoescape=True),
        ),
    )


def _scope(body: SenderRuleCreate, settings: Settings) -> tuple[ScopeKind, str]:
    if body.recipient is not None:
        recipient = body.recipient.strip().lower()
        if not is_mailbox(recipient):
            raise HTTPException(422, f"not an address: {body.recipient!r}")
        if settings.relay_for(domain_of(recipient)) is None:
            raise HTTPException(422, f"{domain_of(recipient)!r} is not a domain Moat protects")
        return ScopeKind.RECIPIENT, recipient
    if body.domain is not None:
        domain = body.domain.strip().lower().rstrip(".")
        if settings.relay_for(domain) is None:
            raise HTTPException(422, f"{domain!r} is not a domain Moat protects")
        return ScopeKind.DOMAIN, domain
    return ScopeKind.GLOBAL, ""


@router.post(
    "",
    response_model=SenderRulePublic,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": SenderRulePublic, "description": "the existing rule, now this"}},
)
async def set_rule(
    body: SenderRuleCreate,
    response: Response,
    caller: WriterDep,
    rules: SenderRulesDep,
    audit: AuditDep,
    settings: SettingsDep,
) -> SenderRulePublic:
    """Allow or block a sender, for a recipient, a domain or (admins) everyone. There is one
    rule per sender and scope: setting it again replaces its action (200); a new rule is 201.
    Scanners and ingress apply it within ``scanner.sender_lists.poll_interval``."""
    sender = normalise_sender(body.sender)
    if sender is None:
        raise HTTPException(422, f"not an address or a domain: {body.sender!r}")
    kind, scope = _scope(body, settings)
    if not may_manage(caller, kind, scope):
        what = "a global rule" if kind == ScopeKind.GLOBAL else f"a rule for {scope}"
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"this token may not set {what}")
    rule, created = await rules.put(
        RuleAction(body.action), sender, kind, scope, caller.actor, body.note
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    await audit.record(caller, "sender_rule_set", None, f"{rule.describe()} ({rule.id})")
    return public(rule)


@router.get("", response_model=SenderRuleList)
async def list_rules(
    caller: CallerDep,
    rules: SenderRulesDep,
    action: Literal["allow", "block"] | None = None,
    sender: Annotated[str | None, Query(max_length=320)] = None,
    recipient: Annotated[str | None, Query(max_length=320, description="rules for it")] = None,
    domain: Annotated[str | None, Query(max_length=255, description="rules for it")] = None,
    kind: Annotated[
        Literal["recipient", "domain", "global"] | None, Query(description="rules of this scope")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[
        str | None, Query(pattern=RULE_ID, description="the ``next`` of the previous page")
    ] = None,
) -> SenderRuleList:
    """The rules the caller may see, newest first, filtered; ``cursor`` continues a page."""
    scope_kind, scope = (ScopeKind(kind) if kind else None), None
    if recipient is not None:
        scope_kind, scope = ScopeKind.RECIPIENT, recipient.strip().lower()
    elif domain is not None:
        scope_kind, scope = ScopeKind.DOMAIN, domain.strip().lower().rstrip(".")
    page = await rules.page(
        visible=visible_rules(caller),
        action=RuleAction(action) if action else None,
        sender=(normalise_sender(sender) or sender.strip().lower()) if sender else None,
        scope_kind=scope_kind,
        scope=scope,
        before_id=cursor,
        limit=limit,
    )
    return SenderRuleList(
        count=len(page),
        rules=[public(rule) for rule in page],
        next=page[-1].id if len(page) == limit else None,
    )


@router.delete("/{rule_id}", response_model=SenderRulePublic)
async def delete_rule(
    rule_id: str, caller: WriterDep, rules: SenderRulesDep, audit: AuditDep
) -> SenderRulePublic:
    """Remove a rule. One the caller may not manage answers 404, as an unknown one."""
    rule = await rules.get(rule_id) if rule_id.isalnum() and len(rule_id) <= 26 else None
    if rule is None or not may_manage(caller, rule.scope_kind, rule.scope):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no sender rule {rule_id!r}")
    if not await rules.delete(rule.id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no sender rule {rule_id!r}")
    await audit.record(caller, "sender_rule_removed", None, f"{rule.describe()} ({rule.id})")
    return public(rule)


async def _from_message(
    action: RuleAction,
    message_id: str,
    body: SenderFromMessage | None,
    caller: Principal,
    repository: RepositoryDep,
    rules: SenderRulesDep,
    audit: AuditDep,
    settings: Settings,
) -> SenderRulesSet:
    record = await visible_message(repository, caller, message_id, with_history=False)
    body = body or SenderFromMessage()
    listed = await list_message_sender(
        caller,
        record,
        action,
        rules,
        audit,
        settings,
        whole_domain=body.whole_domain,
        note=body.note,
    )
    return SenderRulesSet(count=len(listed), rules=[public(rule) for rule in listed])


@message_router.post("/{message_id}/block-sender", response_model=SenderRulesSet)
async def block_sender(
    message_id: str,
    caller: WriterDep,
    repository: RepositoryDep,
    rules: SenderRulesDep,
    audit: AuditDep,
    settings: SettingsDep,
    body: SenderFromMessage | None = None,
) -> SenderRulesSet:
    """Block the message's envelope sender (or, with ``whole_domain``, its domain) for each of
    its recipients the caller acts for. A message from the null sender answers 422."""
    return await _from_message(
        RuleAction.BLOCK, message_id, body, caller, repository, rules, audit, settings
    )


@message_router.post("/{message_id}/allow-sender", response_model=SenderRulesSet)
async def allow_sender(
    message_id: str,
    caller: WriterDep,
    repository: RepositoryDep,
    rules: SenderRulesDep,
    audit: AuditDep,
    settings: SettingsDep,
    body: SenderFromMessage | None = None,
) -> SenderRulesSet:
    """Allow the message's envelope sender (or its domain) for each of its recipients the
    caller acts for: their mail is never held as spam (a virus or a policy finding still
    holds it). A message from the null sender answers 422."""
    return await _from_message(
        RuleAction.ALLOW, message_id, body, caller, repository, rules, audit, settings
    )
