"""The symbol table (moat/symbols.py): complete, documented, overridable per domain, strict
about names, and built so that no single weak signal quarantines mail by itself."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from moat.model import Category, Finding, VerdictName
from moat.settings import ScannerSettings, Settings
from moat.symbols import BAYES_BANDS, SYMBOLS, bayes_band, markdown
from services.scanner.verdict import decide

ROOT = Path(__file__).resolve().parents[2]
POLICY = ScannerSettings()


def test_docs_symbols_md_is_the_table() -> None:
    written = (ROOT / "docs" / "symbols.md").read_text()
    assert written == markdown(), "run: python -m moat.symbols > docs/symbols.md"


# Symbols in the check modules: literals passed to a finding, an add(), a hit, or a dict of
# symbols; dynamic SPF_<RESULT> and <CHECK>_FAIL/_NONE are covered below.
_EMITTED = re.compile(
    r"""(?:finding\(\s*[\w.]+,\s*|add\(\s*|hits\[|"[a-z_]+":\s*|Kind\.\w+:\s*|_finding\(\s*message,\s*)"""
    r"""(?:\n\s*)?"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)\"""",
)


def test_every_symbol_a_check_emits_is_in_the_table() -> None:
    emitted: set[str] = set()
    for path in (ROOT / "services" / "scanner" / "checks").glob("*.py"):
        emitted |= set(_EMITTED.findall(path.read_text()))
    emitted |= {f"SPF_{r.upper()}" for r in ("pass", "fail", "softfail", "neutral", "permerror")}
    emitted |= {"SPF_TEMPERROR"}
    assert len(emitted) > 40, sorted(emitted)  # the pattern still finds them
    assert emitted - set(SYMBOLS) == set()


def test_every_table_symbol_is_emitted_somewhere() -> None:
    """A symbol no check emits is a dead line in the table (and in the docs)."""
    sources = "\n".join(
        p.read_text() for p in (ROOT / "services" / "scanner" / "checks").glob("*.py")
    )
    dynamic = {
        f"SPF_{r}" for r in ("PASS", "FAIL", "SOFTFAIL", "NEUTRAL", "PERMERROR", "TEMPERROR")
    }
    bands = {name for name, _, _ in BAYES_BANDS}  # named by bayes_band()
    missing = {
        name for name in SYMBOLS if f'"{name}"' not in sources and name not in dynamic | bands
    }
    assert missing == set()


def test_an_unknown_symbol_stops_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="unknown symbol in scanner.symbols: NO_SUCH"):
        ScannerSettings(symbols={"NO_SUCH": 1.0})
    config = tmp_path / "moat.yaml"
    config.write_text(
        "domains:\n  ours.test:\n    relay: 127.0.0.1:25\n"
        "    scanner: {symbols: {HTML_ONLYY: 0.5}}\n"
    )
    monkeypatch.setenv("MOAT_CONFIG", str(config))
    with pytest.raises(ValidationError, match="HTML_ONLYY"):
        Settings()
    with pytest.raises(ValidationError):
        ScannerSettings(symbols={"GTUBE": {"action": "delete"}})
    with pytest.raises(ValidationError):
        ScannerSettings(symbols={"GTUBE": {"scor": 1}})


def test_blocklist_symbols_are_known_when_their_zone_is_configured() -> None:
    with pytest.raises(ValidationError):
        ScannerSettings(symbols={"RBL_ZEN_BL_TEST": 2})
    policy = ScannerSettings(
        rules={"dnsbl_zones": [{"zone": "zen.bl.test"}]}, symbols={"RBL_ZEN_BL_TEST": 2}
    )
    assert policy.symbol_table.symbols["RBL_ZEN_BL_TEST"].score == 2


def test_per_domain_overrides_and_the_global_ones_merge() -> None:
    settings = Settings(
        scanner={"symbols": {"GTUBE": {"score": 3}, "HTML_ONLY": 0.5}},
        domains={
            "strict.test": {
                "relay": "127.0.0.1:25",
                "scanner": {"symbols": {"HTML_ONLY": 2.0, "URL_SHORTENER": {"action": "policy"}}},
            },
            "plain.test": {"relay": "127.0.0.1:25"},
        },
    )
    strict = settings.scanner_policy("strict.test").symbol_table.symbols
    plain = settings.scanner_policy("plain.test").symbol_table.symbols
    assert (strict["HTML_ONLY"].score, plain["HTML_ONLY"].score) == (2.0, 0.5)
    assert (strict["URL_SHORTENER"].action, plain["URL_SHORTENER"].action) == ("policy", None)
    # The global mapping survives the domain's merge: GTUBE is still forced spam, scored 3.
    assert (strict["GTUBE"].score, strict["GTUBE"].action) == (3.0, "spam")
    assert SYMBOLS["HTML_ONLY"].score == 1.0  # the defaults are never changed


def test_the_older_switches_are_read_into_the_table() -> None:
    lenient = ScannerSettings(
        attachments={"encrypted_archive_action": "info", "opaque_archive_action": "policy"},
        auth={"dmarc_reject": "spam"},
    ).symbol_table.symbols
    assert (lenient["ARCHIVE_ENCRYPTED"].action, lenient["ARCHIVE_ENCRYPTED"].score) == (None, 0)
    assert lenient["ARCHIVE_OPAQUE"].action == "policy"
    assert (lenient["DMARC_REJECT"].action, lenient["DMARC_REJECT"].score) == (None, 10.0)


@pytest.mark.parametrize(
    ("probability", "band"),
    [
        (0.0, "BAYES_00"),
        (0.0099, "BAYES_00"),
        (0.01, "BAYES_05"),
        (0.05, "BAYES_20"),
        (0.5, "BAYES_50"),
        (0.9899, "BAYES_95"),
        (0.99, "BAYES_99"),
        (0.999, "BAYES_999"),
        (1.0, "BAYES_999"),
    ],
)
def test_bayes_bands(probability: float, band: str) -> None:
    assert bayes_band(probability) == band


def test_band_scores_rise_with_the_probability_and_low_bands_count_for_the_mail() -> None:
    scores = [score for _, _, score in BAYES_BANDS]
    assert scores == sorted(scores) and len(set(scores)) == len(scores)
    assert all(score < 0 for name, lower, score in BAYES_BANDS if lower < 0.2)


def finding(symbol: str) -> Finding:
    return Finding(check="test", symbol=symbol, category=Category.SPAM)


# Signals a legitimate message can show by itself: none may quarantine it alone. (BAYES_999
# is a calibrated 1-in-1,000 chance of ham; DMARC_QUARANTINE is the domain's own request.)
STRONG = {"BAYES_999", "DMARC_QUARANTINE"}


def test_no_single_weak_signal_quarantines() -> None:
    for name, symbol in SYMBOLS.items():
        if symbol.action is None and name not in STRONG:
            verdict = decide([finding(name)], POLICY)
            assert verdict.verdict == VerdictName.CLEAN, name


def test_html_only_with_a_confident_classifier_is_not_enough() -> None:
    """The false positives of issue 10: HTML news alerts and newsletters, HTML only, that the
    classifier scored very high with nothing else against them."""
    for band in ("BAYES_95", "BAYES_99"):
        assert decide([finding("HTML_ONLY"), finding(band)], POLICY).verdict == VerdictName.CLEAN
    # A newsletter that authenticates and identifies itself stays clean even at BAYES_999...
    newsletter = ["HTML_ONLY", "BAYES_999", "DKIM_VALID_ALIGNED", "DMARC_PASS"]
    newsletter += ["LIST_ID_UNSUBSCRIBE", "LIST_ONECLICK"]
    assert decide([finding(s) for s in newsletter], POLICY).verdict == VerdictName.CLEAN
    # ...while two independent signals against the mail still make spam.
    assert (
        decide([finding("BAYES_99"), finding("URL_IP_LITERAL")], POLICY).verdict == VerdictName.SPAM
    )


def test_any_two_rule_hits_with_a_high_band_make_spam() -> None:
    rules = [n for n, s in SYMBOLS.items() if s.group == "rules" and s.score >= 1.0]
    for a, b in itertools.combinations(rules, 2):
        verdict = decide([finding(a), finding(b), finding("BAYES_95")], POLICY)
        assert verdict.verdict == VerdictName.SPAM, (a, b)


def test_a_finding_counted_as_the_table_says_is_not_copied_again() -> None:
    table = ScannerSettings().symbol_table
    made = table.finding("headers", "SUBJ_ALL_CAPS", "SUBJECT")
    assert table.score(made) is made
    none = Finding(check="eicar", symbol="EICAR_NONE", category=Category.INFO)
    assert table.score(none) is none
    # A check's own category or score is still replaced by the table's.
    forged = made.model_copy(update={"score": 99.0, "category": Category.VIRUS})
    counted = table.score(forged)
    assert counted is not forged
    assert (counted.category, counted.score) == (made.category, made.score)
