"""Allow and block lists of senders: the rules (table ``sender_rules``), which rule applies to
a sender and a recipient, and the cache that the scanner and ingress read them through.

A rule names a sender (an address, or a domain: that domain and its subdomains) and a scope:
one recipient address, one protected domain, or everyone (global). The envelope sender is
what is matched; the null sender (bounces, ``""``) matches no rule, since it names nobody.

The most specific rule wins, first by scope, then by sender:

1. a rule for the recipient's address, else one for its domain, else a global rule;
2. within that scope, a rule for the sender's address, else the rule for the longest of its
   domains (``mail.example.org`` before ``example.org``).

So a recipient's "allow bob@example.org" beats the domain's "block example.org", and a global
block never overrides what a recipient or their domain said. There is at most one rule per
scope and sender (a unique key): setting one again replaces its action.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from moat.addresses import is_mailbox
from moat.db import READ_ONLY, db_now, sender_rules
from moat.model import new_message_id

log = logging.getLogger(__name__)


class RuleAction(StrEnum):
    ALLOW = "allow"
    BLOCK = "block"


class ScopeKind(StrEnum):
    RECIPIENT = "recipient"
    DOMAIN = "domain"
    GLOBAL = "global"


@dataclass(frozen=True)
class SenderRule:
    id: str
    action: RuleAction
    sender: str  # "someone@example.org" or "example.org", lower case
    scope_kind: ScopeKind
    scope: str  # the recipient address or the domain, lower case; "" for global
    created_at: datetime
    created_by: str
    note: str = ""

    def describe(self) -> str:
        where = "everyone" if self.scope_kind == ScopeKind.GLOBAL else self.scope
        return f"{self.action} {self.sender} for {where}"


def normalise_sender(value: str) -> str | None:
    """An address or a domain as rules keep it (lower case, no trailing dot, no angle
    brackets); None if it is neither."""
    text = value.strip().strip("<>").strip().lower().rstrip(".")
    if "@" in text:
        return text if is_mailbox(text) else None
    return text if is_domain(text) else None


def is_domain(text: str) -> bool:
    labels = text.split(".")
    return len(labels) >= 2 and all(
        0 < len(label) <= 63 and label.replace("-", "").isalnum() and label[0] != "-"
        for label in labels
    )


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def _sender_keys(sender: str) -> list[str]:
    """What a rule may name to match ``sender``, most specific first: the address, then its
    domain and each parent domain with at least two labels."""
    address = sender.strip().lower()
    labels = domain_of(address).split(".")
    domains = [".".join(labels[i:]) for i in range(len(labels) - 1)]
    return [address, *domains] if "@" in address else domains


class RuleSet:
    """Every rule, indexed for the lookup of one sender and one recipient (dictionary hits
    only, whatever the number of rules)."""

    def __init__(self, rules: Iterable[SenderRule] = ()) -> None:
        self._index: dict[tuple[ScopeKind, str, str], SenderRule] = {}
        for rule in rules:
            self._index[(rule.scope_kind, rule.scope, rule.sender)] = rule

    def __len__(self) -> int:
        return len(self._index)

    def applicable(self, sender: str, recipient: str) -> SenderRule | None:
        """The rule that decides about mail from ``sender`` to ``recipient``, or None. The null
        sender ("" or "<>") matches none."""
        if not self._index or sender in ("", "<>"):
            return None
        keys = _sender_keys(sender)
        recipient = recipient.lower()
        for kind, scope in (
            (ScopeKind.RECIPIENT, recipient),
            (ScopeKind.DOMAIN, domain_of(recipient)),
            (ScopeKind.GLOBAL, ""),
        ):
            for key in keys:
                rule = self._index.get((kind, scope, key))
                if rule is not None:
                    return rule
        return None


@dataclass(frozen=True)
class Judgement:
    """What the rules say about one message: the rules that block it (for any recipient) and
    whether every recipient allows its sender."""

    blocked_by: tuple[SenderRule, ...]
    allowed_by: tuple[SenderRule, ...]
    all_allow: bool


def judge(rules: RuleSet, sender: str, recipients: Sequence[str]) -> Judgement:
    """A message has one verdict for all its recipients, so it is held when any recipient's
    rule blocks its sender, and spared a spam verdict only when every recipient's rule allows
    it: mixed messages err towards holding (``block_action: reject`` refuses just the blocking
    recipients at RCPT instead)."""
    found = [rules.applicable(sender, r) for r in recipients]
    blocked = tuple(r for r in found if r is not None and r.action == RuleAction.BLOCK)
    allowed = tuple(r for r in found if r is not None and r.action == RuleAction.ALLOW)
    return Judgement(blocked, allowed, bool(found) and len(allowed) == len(found))


class SenderRuleStore:
    """The rules in the database: what the API writes and the caches read."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.reader = engine.execution_options(**{READ_ONLY: True})

    async def all(self) -> list[SenderRule]:
        async with self.reader.connect() as conn:
            return [_rule(row) for row in await conn.execute(select(sender_rules))]

    async def page(
        self,
        *,
        visible: Any = None,
        action: RuleAction | None = None,
        sender: str | None = None,
        scope_kind: ScopeKind | None = None,
        scope: str | None = None,
        before_id: str | None = None,
        limit: int = 100,
    ) -> list[SenderRule]:
        """Newest first; ``visible`` is a SQL condition limiting what the caller may see."""
        query = select(sender_rules).order_by(sender_rules.c.id.desc()).limit(limit)
        if visible is not None:
            query = query.where(visible)
        if action is not None:
            query = query.where(sender_rules.c.action == action)
        if sender is not None:
            query = query.where(sender_rules.c.sender == sender)
        if scope_kind is not None:
            query = query.where(sender_rules.c.scope_kind == scope_kind)
        if scope is not None:
            query = query.where(sender_rules.c.scope == scope)
        if before_id is not None:
            query = query.where(sender_rules.c.id < before_id)
        async with self.reader.connect() as conn:
            return [_rule(row) for row in await conn.execute(query)]

    async def get(self, rule_id: str) -> SenderRule | None:
        async with self.reader.connect() as conn:
            row = (
                await conn.execute(select(sender_rules).where(sender_rules.c.id == rule_id))
            ).first()
        return _rule(row) if row is not None else None

    async def put(
        self,
        action: RuleAction,
        sender: str,
        scope_kind: ScopeKind,
        scope: str,
        by: str,
        note: str = "",
    ) -> tuple[SenderRule, bool]:
        """Set the rule for this scope and sender: a new one (True), or the existing one with
        this action (False). Its time and author become this change's."""
        key = (
            sender_rules.c.scope_kind == scope_kind,
            sender_rules.c.scope == scope,
            sender_rules.c.sender == sender,
        )
        values = {"action": action, "created_at": db_now(), "created_by": by, "note": note}
        for _ in range(2):  # a concurrent insert of the same key: the second try updates it
            async with self.engine.begin() as conn:
                changed = await conn.execute(update(sender_rules).where(*key).values(**values))
                if changed.rowcount:
                    row = (await conn.execute(select(sender_rules).where(*key))).one()
                    return _rule(row), False
            try:
                async with self.engine.begin() as conn:
                    row_id = new_message_id()
                    await conn.execute(
                        sender_rules.insert().values(
                            id=row_id, sender=sender, scope_kind=scope_kind, scope=scope, **values
                        )
                    )
                    row = (
                        await conn.execute(select(sender_rules).where(sender_rules.c.id == row_id))
                    ).one()
                    return _rule(row), True
            except IntegrityError:
                continue
        raise RuntimeError("the sender rule changed under us twice")  # pragma: no cover

    async def delete(self, rule_id: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(sender_rules).where(sender_rules.c.id == rule_id))
            return bool(result.rowcount)


def _rule(row: Any) -> SenderRule:
    mapping = row._mapping
    return SenderRule(
        id=mapping["id"],
        action=RuleAction(mapping["action"]),
        sender=mapping["sender"],
        scope_kind=ScopeKind(mapping["scope_kind"]),
        scope=mapping["scope"],
        created_at=mapping["created_at"],
        created_by=mapping["created_by"],
        note=mapping["note"],
    )


class CachedRules:
    """The rules as one process (a scanner, ingress) sees them: read whole from the database at
    most every ``poll_interval`` seconds, on the first use after that, not per message. A read
    that fails keeps the rules in force (and is logged once); before any read succeeded there
    are none to keep, and ``current`` raises, so that a scanner never judges without them."""

    def __init__(self, store: SenderRuleStore, poll_interval: float) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self.rules: RuleSet | None = None
        self._read_at = float("-inf")
        self._reading = asyncio.Lock()
        self._warned = False

    async def current(self) -> RuleSet:
        if time.monotonic() - self._read_at >= self.poll_interval and not self._reading.locked():
            async with self._reading:
                await self._read()
        elif self.rules is None:  # another task is reading the first set: wait for it
            async with self._reading:
                if self.rules is None:
                    await self._read()
        if self.rules is None:
            raise RuntimeError("the sender lists could not be read yet")
        return self.rules

    async def _read(self) -> None:
        try:
            rules = await self.store.all()
        except Exception as exc:
            self._read_at = time.monotonic()
            if not self._warned:
                log.warning("sender lists: cannot read the rules (%r); using those in force", exc)
                self._warned = True
            return
        self._read_at = time.monotonic()
        self._warned = False
        if self.rules is None or len(rules) != len(self.rules):
            log.info("sender lists: %d rule(s)", len(rules))
        self.rules = RuleSet(rules)

    async def close(self) -> None:
        await self.store.engine.dispose()
