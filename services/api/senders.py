"""Listing a quarantined message's sender, allowed or blocked: one function for the REST route
(``POST /v1/messages/{id}/block-sender``, ``.../allow-sender``), the web page's buttons and a
digest's one-click block link, so each writes the same rules.

The rule is for the envelope sender (``MAIL FROM``: what Moat records as the message's sender),
or its domain, and it is set for each recipient of the message the caller acts for: a user for
their own address, a domain token for its domain's recipients, an administrator for every
recipient. The null sender (bounces, automatic notices) matches no rule and cannot be listed.
Setting a rule where one exists for that sender and recipient turns it over (block becomes
allow): one sender, one rule per scope.
"""

from __future__ import annotations

from moat.repository import MessageRecord
from moat.sender_rules import (
    RuleAction,
    ScopeKind,
    SenderRule,
    SenderRuleStore,
    domain_of,
    normalise_sender,
)
from moat.settings import Settings
from services.api.audit import AuditLog
from services.api.auth import Principal
from services.api.quarantine import Refused


async def list_message_sender(
    caller: Principal,
    record: MessageRecord,
    action: RuleAction,
    rules: SenderRuleStore,
    audit: AuditLog,
    settings: Settings,
    *,
    whole_domain: bool = False,
    note: str = "",
) -> list[SenderRule]:
    """Allow or block ``record``'s sender for the caller's recipients of it; the rules set."""
    if not caller.may_change:
        raise Refused(403, "a reader token cannot change anything")
    if not record.mail_from:
        raise Refused(
            422,
            "the message has the null sender (a bounce or an automatic notice): there is no "
            "sender to list; bounces are never matched by a rule",
        )
    sender = normalise_sender(record.mail_from)
    if sender is None:
        raise Refused(422, f"the sender {record.mail_from!r} cannot be listed")
    if whole_domain:
        sender = domain_of(sender)
    recipients = sorted(
        {
            r.address.lower()
            for r in record.recipients
            if caller.covers(r.address) and settings.relay_for(domain_of(r.address)) is not None
        }
    )
    if not recipients:
        raise Refused(422, "none of the message's recipients is in a domain Moat protects")
    listed = []
    for recipient in recipients:
        rule, _ = await rules.put(
            action, sender, ScopeKind.RECIPIENT, recipient, caller.actor, note
        )
        await audit.record(
            caller, f"sender_{action}ed", record.id, f"{rule.describe()} ({rule.id})"
        )
        listed.append(rule)
    return listed
