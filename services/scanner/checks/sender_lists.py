"""Allow and block lists (docs/checks/sender_lists.md): the envelope sender against the rules
kept through ``/v1/senders`` (``moat/sender_rules.py`` says which rule applies).

- ``SENDER_BLOCKED`` (forced policy, in the symbol table): a recipient's rule blocks the sender. A
  policy finding forces the policy verdict: the message is held.
- ``SENDER_ALLOWED`` (info): every recipient's rule allows the sender. The verdict then gives
  no spam verdict; a virus or a policy finding still holds the message.

The rules are cached in the process and read again every ``poll_interval`` seconds; a check
that could never read them fails (``SENDER_LISTS_FAIL``): the message waits, never judged
without them.
"""

from __future__ import annotations

from moat.db import create_engine
from moat.model import Finding
from moat.sender_rules import CachedRules, SenderRuleStore, judge
from moat.settings import Settings
from services.scanner.checks.base import ParsedMessage


class SenderListCheck:
    name = "sender_lists"

    def __init__(self, settings: Settings, rules: CachedRules | None = None) -> None:
        if rules is None:
            store = SenderRuleStore(create_engine(settings.database_url))
            rules = CachedRules(store, settings.scanner.sender_lists.poll_interval)
        self.rules = rules

    async def check(self, message: ParsedMessage) -> list[Finding]:
        policy = message.policy.sender_lists
        sender = message.envelope.mail_from
        if not policy.enabled or not sender:
            return []
        judgement = judge(await self.rules.current(), sender, message.envelope.rcpt_tos)
        if judgement.blocked_by:
            detail = "; ".join(rule.describe() for rule in judgement.blocked_by)
            return [message.policy.symbol_table.finding(self.name, "SENDER_BLOCKED", detail)]
        if judgement.all_allow:
            detail = "; ".join(sorted({rule.describe() for rule in judgement.allowed_by}))
            return [message.policy.symbol_table.finding(self.name, "SENDER_ALLOWED", detail)]
        return []
