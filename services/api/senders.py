"""Allow and block rules written from the web page and from digest links: one small function
over the ``sender_rules`` table (the REST sender lists use the same table), so both write the
same rows.

A rule from a quarantined message is for the envelope sender (``MAIL FROM``: what Moat records
as the message's sender), scoped to the recipient who asked, or to their domain for a domain
token, or global for an administrator. Writing a rule that exists with the other action turns
it over (block becomes allow), so one sender has one rule per scope.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from moat.db import db_now, sender_rules
from moat.model import new_message_id
from services.api.auth import Principal, Role

RuleAction = Literal["allow", "block"]


@dataclass(frozen=True)
class Rule:
    id: str
    action: RuleAction
    sender: str
    scope_kind: str  # recipient | domain | global
    scope: str


def scope_for(caller: Principal, recipient: str) -> tuple[str, str]:
    """Whose rule it is: the recipient's own, the domain's for a domain token, everyone's for
    an administrator."""
    if caller.role == Role.DOMAIN and caller.scope:
        return "domain", caller.scope
    if caller.is_admin:
        return "global", ""
    return "recipient", recipient.lower()


async def set_rule(
    engine: AsyncEngine,
    action: RuleAction,
    sender: str,
    scope_kind: str,
    scope: str,
    created_by: str,
    note: str = "",
) -> Rule:
    """Write a rule (or turn an existing one for the same sender and scope over)."""
    sender = sender.strip().lower()
    where = (
        sender_rules.c.scope_kind == scope_kind,
        sender_rules.c.scope == scope,
        sender_rules.c.sender == sender,
    )
    for _ in range(2):  # a concurrent insert of the same rule: the second round updates it
        rule_id = new_message_id()
        try:
            async with engine.begin() as conn:
                existing = (await conn.execute(select(sender_rules.c.id).where(*where))).scalar()
                if existing is not None:
                    rule_id = existing
                    await conn.execute(
                        update(sender_rules)
                        .where(sender_rules.c.id == existing)
                        .values(
                            action=action, created_by=created_by, created_at=db_now(), note=note
                        )
                    )
                else:
                    await conn.execute(
                        insert(sender_rules).values(
                            id=rule_id,
                            action=action,
                            sender=sender,
                            scope_kind=scope_kind,
                            scope=scope,
                            created_at=db_now(),
                            created_by=created_by,
                            note=note,
                        )
                    )
        except IntegrityError:
            continue
        return Rule(rule_id, action, sender, scope_kind, scope)
    raise RuntimeError("sender rule kept changing under us")
