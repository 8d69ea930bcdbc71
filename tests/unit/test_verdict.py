"""The verdict is a pure function of findings and policy: every branch, exhaustively."""

from __future__ import annotations

import itertools

import pytest

from moat.model import Action, Category, Finding, VerdictName
from moat.settings import ScannerSettings
from services.scanner.verdict import Undecidable, decide

POLICY = ScannerSettings(spam_threshold=5.0)


def finding(category: Category, score: float = 0.0, symbol: str = "X") -> Finding:
    return Finding(check="test", symbol=symbol, category=category, score=score)


def test_no_findings_is_clean_and_delivered() -> None:
    verdict = decide([], POLICY)
    assert (verdict.verdict, verdict.action, verdict.score) == (
        VerdictName.CLEAN,
        Action.DELIVER,
        0.0,
    )


def test_info_findings_never_score() -> None:
    verdict = decide([finding(Category.INFO, 99.0)], POLICY)
    assert verdict.verdict == VerdictName.CLEAN and verdict.score == 0.0


@pytest.mark.parametrize(
    ("score", "expected"),
    [(4.99, VerdictName.CLEAN), (5.0, VerdictName.SPAM), (1000.0, VerdictName.SPAM)],
)
def test_spam_is_a_score_at_or_over_the_threshold(score: float, expected: VerdictName) -> None:
    assert decide([finding(Category.SPAM, score)], POLICY).verdict == expected


def test_scores_add_up_across_findings() -> None:
    verdict = decide([finding(Category.SPAM, 2.5), finding(Category.SPAM, 2.5)], POLICY)
    assert verdict.verdict == VerdictName.SPAM and verdict.score == 5.0


def test_negative_scores_can_pull_under_the_threshold() -> None:
    verdict = decide([finding(Category.SPAM, 6.0), finding(Category.SPAM, -2.0)], POLICY)
    assert verdict.verdict == VerdictName.CLEAN


def test_a_virus_is_a_virus_whatever_the_score() -> None:
    verdict = decide([finding(Category.VIRUS, 0.0), finding(Category.SPAM, -100.0)], POLICY)
    assert verdict.verdict == VerdictName.VIRUS and verdict.action == Action.QUARANTINE


@pytest.mark.parametrize(
    "categories", list(itertools.permutations([Category.VIRUS, Category.POLICY, Category.SPAM]))
)
def test_precedence_virus_then_policy_then_spam(categories: tuple[Category, ...]) -> None:
    findings = [finding(category, 10.0) for category in categories]
    assert decide(findings, POLICY).verdict == VerdictName.VIRUS
    without_virus = [f for f in findings if f.category != Category.VIRUS]
    assert decide(without_virus, POLICY).verdict == VerdictName.POLICY


def test_a_failed_check_means_no_verdict() -> None:
    with pytest.raises(Undecidable, match="CLAMAV_FAIL"):
        decide(
            [finding(Category.VIRUS, 100.0), finding(Category.FAILURE, symbol="CLAMAV_FAIL")],
            POLICY,
        )


def test_actions_come_from_the_policy() -> None:
    lenient = ScannerSettings(
        actions={"clean": "deliver", "spam": "deliver", "virus": "quarantine", "policy": "deliver"}
    )
    assert decide([finding(Category.SPAM, 50.0)], lenient).action == Action.DELIVER
    assert decide([finding(Category.POLICY)], lenient).action == Action.DELIVER
    assert decide([finding(Category.VIRUS)], lenient).action == Action.QUARANTINE


def test_findings_are_kept_in_the_verdict() -> None:
    findings = [finding(Category.INFO, symbol="A"), finding(Category.SPAM, 1.0, symbol="B")]
    assert [f.symbol for f in decide(findings, POLICY).findings] == ["A", "B"]


ALLOWED = finding(Category.INFO, symbol="SENDER_ALLOWED")
BLOCKED = finding(Category.POLICY, 10.0, symbol="SENDER_BLOCKED")


@pytest.mark.parametrize(
    ("findings", "expected"),
    [
        # An allow takes the spam verdict away, whatever the score...
        ([ALLOWED, finding(Category.SPAM, 50.0)], VerdictName.CLEAN),
        ([ALLOWED, finding(Category.SPAM, 5.0)], VerdictName.CLEAN),
        ([ALLOWED], VerdictName.CLEAN),
        # ...and nothing else: a virus or a policy finding holds the message all the same.
        ([ALLOWED, finding(Category.VIRUS)], VerdictName.VIRUS),
        ([ALLOWED, finding(Category.POLICY)], VerdictName.POLICY),
        ([ALLOWED, finding(Category.VIRUS), finding(Category.SPAM, 50.0)], VerdictName.VIRUS),
        # A block is a policy finding: held whatever the score, below a virus.
        ([BLOCKED, finding(Category.SPAM, -100.0)], VerdictName.POLICY),
        ([BLOCKED, finding(Category.VIRUS)], VerdictName.VIRUS),
        # Only the info finding of that name counts as an allow.
        ([finding(Category.SPAM, 50.0, symbol="SENDER_ALLOWED")], VerdictName.SPAM),
        ([finding(Category.INFO, symbol="OTHER"), finding(Category.SPAM, 50.0)], VerdictName.SPAM),
    ],
)
def test_sender_lists_in_the_verdict(findings: list[Finding], expected: VerdictName) -> None:
    verdict = decide(findings, POLICY)
    assert verdict.verdict == expected
    assert verdict.score == round(sum(f.score for f in findings if f.category != "info"), 3)


def test_an_allowed_message_keeps_its_score_and_its_allow_in_the_findings() -> None:
    verdict = decide([ALLOWED, finding(Category.SPAM, 7.5, symbol="BAYES_SPAM")], POLICY)
    assert verdict.verdict == VerdictName.CLEAN and verdict.action == Action.DELIVER
    assert verdict.score == 7.5
    assert [f.symbol for f in verdict.findings] == ["SENDER_ALLOWED", "BAYES_SPAM"]
