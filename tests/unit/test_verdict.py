"""The verdict is a pure function of findings and policy: every branch, exhaustively. Scores
and forced actions come from the policy's symbol table (moat/symbols.py), never from what a
check wrote into its finding."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from moat.model import Action, Category, Finding, VerdictName
from moat.settings import ScannerSettings
from services.scanner.verdict import Undecidable, decide

POLICY = ScannerSettings(spam_threshold=5.0)


def finding(symbol: str, category: Category = Category.SPAM, score: float = 0.0) -> Finding:
    """A finding as a check reports it; category and score are what the check *claimed*."""
    return Finding(check="test", symbol=symbol, category=category, score=score)


def scored(**scores: Any) -> ScannerSettings:
    return ScannerSettings(spam_threshold=5.0, symbols=scores)


def test_no_findings_is_clean_and_delivered() -> None:
    verdict = decide([], POLICY)
    assert (verdict.verdict, verdict.action, verdict.score) == (
        VerdictName.CLEAN,
        Action.DELIVER,
        0.0,
    )


def test_info_findings_never_score() -> None:
    # An info symbol, and a check's "nothing found", whatever score the check wrote.
    findings = [finding("AUTH_RESULTS", Category.SPAM, 99.0), finding("EICAR_NONE", score=99.0)]
    verdict = decide(findings, POLICY)
    assert verdict.verdict == VerdictName.CLEAN and verdict.score == 0.0
    assert {f.category for f in verdict.findings} == {Category.INFO}


def test_the_table_not_the_check_says_what_a_finding_counts_for() -> None:
    # A check that claims a virus and 50 points for HTML_ONLY gets HTML_ONLY's 1.0.
    verdict = decide([finding("HTML_ONLY", Category.VIRUS, 50.0)], POLICY)
    assert (verdict.verdict, verdict.score) == (VerdictName.CLEAN, 1.0)
    assert verdict.findings[0].category == Category.SPAM and verdict.findings[0].score == 1.0
    # And an EICAR finding reported as "info" is still a virus.
    assert decide([finding("EICAR_TEST_FILE", Category.INFO)], POLICY).verdict == VerdictName.VIRUS


@pytest.mark.parametrize(
    ("score", "expected"),
    [(4.99, VerdictName.CLEAN), (5.0, VerdictName.SPAM), (1000.0, VerdictName.SPAM)],
)
def test_spam_is_a_score_at_or_over_the_threshold(score: float, expected: VerdictName) -> None:
    assert decide([finding("HTML_ONLY")], scored(HTML_ONLY=score)).verdict == expected


def test_scores_add_up_across_findings() -> None:
    policy = scored(HTML_ONLY=2.5, MISSING_DATE=2.5)
    verdict = decide([finding("HTML_ONLY"), finding("MISSING_DATE")], policy)
    assert verdict.verdict == VerdictName.SPAM and verdict.score == 5.0


def test_negative_scores_can_pull_under_the_threshold() -> None:
    spam = decide([finding("BAYES_999"), finding("URL_SHORTENER")], POLICY)
    assert spam.verdict == VerdictName.SPAM and spam.score == 6.0
    authenticated = [finding("BAYES_999"), finding("URL_SHORTENER"), finding("DMARC_PASS")]
    authenticated.append(finding("DKIM_VALID_ALIGNED"))
    verdict = decide(authenticated, POLICY)
    assert verdict.verdict == VerdictName.CLEAN and verdict.score == 4.0


def test_a_virus_is_a_virus_whatever_the_score() -> None:
    findings = [finding("EICAR_TEST_FILE"), finding("BAYES_00")]
    verdict = decide(findings, scored(EICAR_TEST_FILE=0, BAYES_00=-100))
    assert verdict.verdict == VerdictName.VIRUS and verdict.action == Action.QUARANTINE


FORCED = {"EICAR_TEST_FILE": VerdictName.VIRUS, "SENDER_BLOCKED": VerdictName.POLICY}
FORCED |= {"GTUBE": VerdictName.SPAM}


@pytest.mark.parametrize("symbols", list(itertools.permutations(FORCED)))
def test_precedence_virus_then_policy_then_spam(symbols: tuple[str, ...]) -> None:
    findings = [finding(symbol) for symbol in symbols]
    assert decide(findings, POLICY).verdict == VerdictName.VIRUS
    without_virus = [f for f in findings if f.symbol != "EICAR_TEST_FILE"]
    assert decide(without_virus, POLICY).verdict == VerdictName.POLICY
    assert decide([finding("GTUBE")], POLICY).verdict == VerdictName.SPAM


def test_a_forced_spam_is_spam_whatever_the_score_and_can_be_made_a_plain_score() -> None:
    assert decide([finding("GTUBE")], scored(GTUBE=-10)).verdict == VerdictName.SPAM
    plain = scored(GTUBE={"action": "none", "score": 3})
    verdict = decide([finding("GTUBE")], plain)
    assert (verdict.verdict, verdict.score) == (VerdictName.CLEAN, 3.0)


def test_a_symbol_can_be_given_a_forced_action() -> None:
    strict = scored(URL_IP_LITERAL={"action": "policy"})
    assert decide([finding("URL_IP_LITERAL")], strict).verdict == VerdictName.POLICY
    assert decide([finding("URL_IP_LITERAL")], POLICY).verdict == VerdictName.CLEAN


def test_a_failed_check_means_no_verdict() -> None:
    with pytest.raises(Undecidable, match="CLAMAV_FAIL"):
        decide([finding("EICAR_TEST_FILE"), finding("CLAMAV_FAIL", Category.FAILURE)], POLICY)


def test_actions_come_from_the_policy() -> None:
    lenient = ScannerSettings(
        actions={"clean": "deliver", "spam": "deliver", "virus": "quarantine", "policy": "deliver"}
    )
    assert decide([finding("GTUBE")], lenient).action == Action.DELIVER
    assert decide([finding("SENDER_BLOCKED")], lenient).action == Action.DELIVER
    assert decide([finding("EICAR_TEST_FILE")], lenient).action == Action.QUARANTINE


def test_findings_are_kept_in_the_verdict() -> None:
    findings = [finding("AUTH_RESULTS", Category.INFO), finding("HTML_ONLY")]
    assert [f.symbol for f in decide(findings, POLICY).findings] == ["AUTH_RESULTS", "HTML_ONLY"]


def test_a_blocklist_listing_keeps_its_zones_weight() -> None:
    policy = ScannerSettings(
        rules={"dnsbl_zones": [{"zone": "zen.bl.test", "symbol": "RCVD_IN_ZEN", "weight": 3}]}
    )
    verdict = decide([finding("RCVD_IN_ZEN", score=6.0)], policy)
    assert (verdict.verdict, verdict.score) == (VerdictName.SPAM, 6.0)


ALLOWED = finding("SENDER_ALLOWED", Category.INFO)
BLOCKED = finding("SENDER_BLOCKED", Category.POLICY, 10.0)
SPAM_50 = finding("GTUBE")


@pytest.mark.parametrize(
    ("findings", "expected"),
    [
        # An allow takes the spam verdict away, whatever the score, forced spam too...
        ([ALLOWED, SPAM_50], VerdictName.CLEAN),
        ([ALLOWED, finding("BAYES_999")], VerdictName.CLEAN),
        ([ALLOWED], VerdictName.CLEAN),
        # ...and nothing else: a virus or a policy finding holds the message all the same.
        ([ALLOWED, finding("EICAR_TEST_FILE")], VerdictName.VIRUS),
        ([ALLOWED, finding("ATTACHMENT_EXECUTABLE")], VerdictName.POLICY),
        ([ALLOWED, finding("CLAMAV_VIRUS"), SPAM_50], VerdictName.VIRUS),
        # A block is a policy finding: held whatever the score, below a virus.
        ([BLOCKED, finding("BAYES_00")], VerdictName.POLICY),
        ([BLOCKED, finding("CLAMAV_VIRUS")], VerdictName.VIRUS),
        # Only the symbol the table makes an allow is one.
        ([finding("AUTH_RESULTS", Category.INFO), SPAM_50], VerdictName.SPAM),
    ],
)
def test_sender_lists_in_the_verdict(findings: list[Finding], expected: VerdictName) -> None:
    verdict = decide(findings, POLICY)
    assert verdict.verdict == expected
    table = POLICY.symbol_table
    assert verdict.score == round(sum(table.score(f).score for f in findings), 3)


def test_an_allowed_message_keeps_its_score_and_its_allow_in_the_findings() -> None:
    verdict = decide([ALLOWED, finding("BAYES_999"), finding("HTML_ONLY")], POLICY)
    assert verdict.verdict == VerdictName.CLEAN and verdict.action == Action.DELIVER
    assert verdict.score == 6.0
    assert [f.symbol for f in verdict.findings] == ["SENDER_ALLOWED", "BAYES_999", "HTML_ONLY"]
