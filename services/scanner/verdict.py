"""The verdict: one pure function of the findings and the policy in settings."""

from __future__ import annotations

from collections.abc import Sequence

from moat.model import Action, Category, Finding, Verdict, VerdictName
from moat.settings import ScannerSettings

# The sender lists' allow (services/scanner/checks/sender_lists.py): no spam verdict.
SENDER_ALLOWED = "SENDER_ALLOWED"


class Undecidable(Exception):
    """A check failed, so no verdict may be given: the message must be scanned again."""


def decide(findings: Sequence[Finding], policy: ScannerSettings) -> Verdict:
    """Virus beats policy beats spam beats clean. A virus or policy finding forces its verdict
    whatever the score; spam is a score at or over the threshold, unless every recipient
    allows the sender (``SENDER_ALLOWED``): an allow spares a message the spam verdict, never
    a virus or policy one. The score is kept as it is, so the verdict still shows it."""
    failed = [f.symbol for f in findings if f.category == Category.FAILURE]
    if failed:
        raise Undecidable(f"checks failed: {', '.join(failed)}")
    score = round(sum(f.score for f in findings if f.category != Category.INFO), 3)
    categories = {f.category for f in findings}
    if Category.VIRUS in categories:
        name = VerdictName.VIRUS
    elif Category.POLICY in categories:
        name = VerdictName.POLICY
    elif score >= policy.spam_threshold and not any(
        f.symbol == SENDER_ALLOWED and f.category == Category.INFO for f in findings
    ):
        name = VerdictName.SPAM
    else:
        name = VerdictName.CLEAN
    return Verdict(
        verdict=name,
        action=Action(policy.actions[name.value]),
        score=score,
        findings=list(findings),
    )
