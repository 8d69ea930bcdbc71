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
