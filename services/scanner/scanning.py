"""Scanning one message: parse it, run every check under the recipient domain's policy, and
judge. Shared by the queue worker and the offline ``check`` command."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from moat.model import Finding, MessageEnvelope, Verdict
from moat.settings import Settings
from services.scanner.checks import Check, ParsedMessage, build_checks, parse, run_checks
from services.scanner.verdict import decide

# Below this size parsing takes well under a millisecond: cheaper than a hop to a thread.
INLINE_PARSE_LIMIT = 128 * 1024


@dataclass(frozen=True)
class ScanResult:
    message: ParsedMessage
    findings: list[Finding]


class Scanner:
    def __init__(self, settings: Settings, checks: tuple[Check, ...] | None = None) -> None:
        self.settings = settings
        self.checks = checks if checks is not None else build_checks(settings)

    def policy_domain(self, envelope: MessageEnvelope) -> str | None:
        """Whose policy applies: the first recipient in a domain we protect."""
        for address in envelope.rcpt_tos:
            domain = address.rpartition("@")[2].lower().rstrip(".")
            if self.settings.relay_for(domain) is not None:
                return domain
        return None

    async def scan(self, message_id: str, raw: bytes, envelope: MessageEnvelope) -> ScanResult:
        """Every check's findings; a failed check shows as a ``*_FAIL`` finding."""
        domain = self.policy_domain(envelope)
        policy = self.settings.scanner_policy(domain)
        if len(raw) > INLINE_PARSE_LIMIT:  # parsing a big message would stall acks and I/O
            message = await asyncio.to_thread(parse, message_id, raw, envelope, policy, domain)
        else:
            message = parse(message_id, raw, envelope, policy, domain)
        findings = await run_checks(self.checks, message, policy.check_timeout)
        return ScanResult(message, findings)

    def judge(self, result: ScanResult) -> Verdict:
        """The verdict; raises ``Undecidable`` when a check failed (retry, never clean)."""
        return decide(result.findings, result.message.policy)
