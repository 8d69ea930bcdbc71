"""The verdict: one pure function of the findings and the policy in settings. Scores and forced
actions come from the policy's symbol table (moat/symbols.py), never from the checks."""

from __future__ import annotations

from collections.abc import Sequence

from moat.model import Action, Category, Finding, Verdict, VerdictName
from moat.settings import ScannerSettings


class Undecidable(Exception):
    """A check failed, so no verdict may be given: the message must be scanned again."""


def decide(findings: Sequence[Finding], policy: ScannerSettings) -> Verdict:
    """Each finding is counted as the table says: its score, and any action it forces. A
    forced virus beats a forced policy, which beats spam (forced, or a score at or over the
    threshold), which beats clean. A forced ``allow`` (``SENDER_ALLOWED``) spares the message
    the spam verdict, never a virus or policy one; the score is kept as it is, so the verdict
    still shows it. The findings are returned as counted (their table score and category)."""
    failed = [f.symbol for f in findings if f.category == Category.FAILURE]
    if failed:
        raise Undecidable(f"checks failed: {', '.join(failed)}")
    table = policy.symbol_table
    counted = [table.score(f) for f in findings]
    score = round(sum(f.score for f in counted if f.category != Category.INFO), 3)
    forced = {table.action(f.symbol) for f in counted}
    if "virus" in forced:
        name = VerdictName.VIRUS
    elif "policy" in forced:
        name = VerdictName.POLICY
    elif "allow" in forced:
        name = VerdictName.CLEAN
    elif "spam" in forced or score >= policy.spam_threshold:
        name = VerdictName.SPAM
    else:
        name = VerdictName.CLEAN
    return Verdict(
        verdict=name,
        action=Action(policy.actions[name.value]),
        score=score,
        findings=counted,
    )
