"""bench/band_nested.py: a band score added to the rest of the verdict decides exactly as
decide() does, and the chosen scores keep the FP limits on the parts they were chosen on."""

from __future__ import annotations

import itertools

import numpy as np

from moat.model import Category, Finding, VerdictName
from moat.settings import ScannerSettings
from moat.symbols import BAYES_BANDS
from services.scanner.verdict import decide
from tests.unit.test_verdict_loso import load

bench = load("band_nested")
POLICY = ScannerSettings(spam_threshold=5.0)
NAMES = [symbol for symbol, _lower, _score in BAYES_BANDS]
PROBABILITY_IN = {symbol: lower + 1e-4 for symbol, lower, _score in BAYES_BANDS}


def finding(symbol: str) -> Finding:
    return Finding(check="test", symbol=symbol, category=Category.SPAM)


def part_of(cases: list[tuple[list[str], str, bool]]) -> object:
    """A Scored part from (other findings, band, spam) cases."""
    rests = {
        ("s", str(i), spam): bench.rest_of([finding(s) for s in others], POLICY)
        for i, (others, _band, spam) in enumerate(cases)
    }
    probabilities = {
        ("s", str(i), spam): PROBABILITY_IN[band] for i, (_o, band, spam) in enumerate(cases)
    }
    return bench.scored("t", probabilities, rests)


def test_the_band_added_to_the_rest_is_decide() -> None:
    others = [
        [],
        ["HTML_ONLY"],
        ["HTML_ONLY", "MISSING_DATE"],
        ["LIST_ID_UNSUBSCRIBE", "DKIM_VALID_ALIGNED"],
        ["URL_IP_LITERAL", "DATE_IN_FUTURE"],
        ["ATTACHMENT_SCRIPT"],  # policy, whatever the band
        ["SENDER_ALLOWED", "URL_IP_LITERAL"],  # allow spares the spam verdict
        ["GTUBE"],  # spam forced
    ]
    cases = [(o, band, False) for o, band in itertools.product(others, NAMES)]
    part = part_of(cases)
    tables = [bench.CURRENT, np.array([-1.9, -0.5, -0.2, 0, 1, 2, 3, 4, 4.5, 6.0])]
    for table in tables:
        got = bench.flagged(part, table, POLICY.spam_threshold)
        for index, (other, band, _spam) in enumerate(cases):
            scored = ScannerSettings(
                spam_threshold=5.0, symbols={band: float(table[NAMES.index(band)])}
            )
            findings = [finding(s) for s in other] + [finding(band)]
            expected = decide(findings, scored).verdict != VerdictName.CLEAN
            assert got[index] == expected, (other, band, table[NAMES.index(band)])


def test_the_choice_keeps_each_sources_ham_within_the_limit() -> None:
    # Spam at BAYES_95 with HTML_ONLY; the same on one ham: a score of 4 for BAYES_95 would
    # catch every spam and that ham, and 1 in 3 ham is over any 0.3% limit.
    spam = [(["HTML_ONLY"], "BAYES_95", True)] * 20
    ham = [(["HTML_ONLY"], "BAYES_95", False)] + [([], "BAYES_05", False)] * 2
    part = part_of(spam + ham)
    values = bench.grid(0.5, 5.5)
    table, choice = bench.choose([part], POLICY.spam_threshold, 0.003, values)
    assert table[NAMES.index("BAYES_95")] + 1.0 < POLICY.spam_threshold
    assert choice["inner_fp"] == 0
    assert list(table) == sorted(table) and len(set(table)) == len(table)
    # without the ham, the same spam is caught
    table, choice = bench.choose([part_of(spam)], POLICY.spam_threshold, 0.003, values)
    assert choice["inner_mean_recall"] == 1.0
