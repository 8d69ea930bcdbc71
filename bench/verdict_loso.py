"""The whole scanner's verdict on mail from sources and years its classifier was not trained on.

    .venv/bin/python bench/verdict_loso.py --max-per-source 1500     # ~15 minutes on one core
    .venv/bin/python bench/verdict_loso.py                           # every message

For each split of ``bench/detection_eval.py`` (leave one source out; mail before 2022 against
mail of 2022 or later), the classifier is trained as detection_eval trains it on the training
part only (same de-duplication of the test part, same options ``--c``, ``--balance``,
``--calibrate``); then the real scanner (``Scanner`` with every check of ``build_checks``, the
classifier check holding that split's model) judges each held-out message as
``bench/verdict_sources.py`` does: ``X-Spam-*`` fields removed, DNS to a server on loopback that
knows no names (authentication cannot pass, blocklists list nothing), an empty database.

Per split: ham not clean at the verdict (the false positives), spam not clean (caught), the same
two for the classifier's band alone (its table score reaches the spam threshold by itself), and
the symbols that scored on the misjudged messages.

The classifier sees the tokens its training saw: the corpora's anonymisation marks are dropped
(``training.clean``), as detection_eval drops them; no real mail stream has them.

Writes ``bench/results/<name>.md`` (default ``verdict-loso``) and ``<name>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import detection_eval as de
import verdict_sources as vs

from moat.model import Verdict, VerdictName
from moat.settings import Settings
from moat.symbols import BAYES_BANDS
from services.scanner.checks import Check, ParsedMessage, build_checks
from services.scanner.checks.classifier import ClassifierCheck
from services.scanner.classifier import training
from services.scanner.classifier.engine import Classifier
from services.scanner.classifier.model import Features, Model
from services.scanner.classifier.tokenizer import tokens
from services.scanner.scanning import Scanner
from tests.support.fakedns import FakeDNS

BANDS = frozenset(symbol for symbol, _lower, _score in BAYES_BANDS)
TOP = 8  # symbols listed per split and kind of error


class HeldOutClassifier(Classifier):
    """A split's model in the scanner, without feedback, fed the tokens training saw: the
    corpora's anonymisation dropped (and, for a redacted source, its made-up addresses)."""

    def __init__(self, settings: Settings, model: Model) -> None:
        super().__init__(settings.scanner.classifier, None, model)
        self.redacted = False  # set per message: whether its source is redacted

    def features_of(self, message: ParsedMessage, max_text: int | None = None) -> Features:
        limit = self.settings.max_text_bytes if max_text is None else max_text
        return self.model.features(training.clean(tokens(message, limit), self.redacted))


def with_classifier(checks: Sequence[Check], replacement: Check) -> tuple[Check, ...]:
    """The scanner's checks with the one of the same name replaced (it must be there)."""
    if not any(c.name == replacement.name for c in checks):
        raise ValueError(f"no {replacement.name} check to replace")
    return tuple(replacement if c.name == replacement.name else c for c in checks)


def band_alone(verdict: Verdict, threshold: float) -> bool:
    """Whether the classifier's band reaches the spam threshold by its table score alone."""
    return any(f.symbol in BANDS and f.score >= threshold for f in verdict.findings)


@dataclass
class Tally:
    """One split's counts. "Flagged" is any verdict but clean (spam, policy or virus hold the
    message alike); an undecidable message (a check failed) is counted apart."""

    ham: int = 0
    spam: int = 0
    ham_flagged: int = 0
    spam_flagged: int = 0
    ham_band: int = 0
    spam_band: int = 0
    undecided: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    bands: Counter[str] = field(default_factory=Counter)  # "spam BAYES_99": how many
    # every scoring symbol on every judged message, by label: what fires on most ham?
    symbols: Counter[str] = field(default_factory=Counter)
    # the symbols that scored (for: > 0 on ham flagged; either sign on spam missed, signed)
    false_positive_symbols: Counter[str] = field(default_factory=Counter)
    missed_spam_symbols: Counter[str] = field(default_factory=Counter)

    def add(self, spam: bool, verdict: Verdict | None, threshold: float) -> None:
        if verdict is None:
            self.undecided += 1
            return
        flagged = verdict.verdict != VerdictName.CLEAN
        band = band_alone(verdict, threshold)
        label = "spam" if spam else "ham"
        self.verdicts[f"{label} {verdict.verdict}"] += 1
        self.bands.update(f"{label} {f.symbol}" for f in verdict.findings if f.symbol in BANDS)
        self.symbols.update(
            f"{label} {f.symbol}({f.score:+g})"
            for f in verdict.findings
            if f.score and f.symbol not in BANDS
        )
        if spam:
            self.spam += 1
            self.spam_flagged += flagged
            self.spam_band += band
            if not flagged:
                self.missed_spam_symbols.update(
                    f"{f.symbol}({f.score:+g})" for f in verdict.findings if f.score
                )
        else:
            self.ham += 1
            self.ham_flagged += flagged
            self.ham_band += band
            if flagged:
                self.false_positive_symbols.update(
                    f"{f.symbol}({f.score:+g})" for f in verdict.findings if f.score > 0
                )

    def figures(self) -> dict[str, object]:
        def share(part: int, whole: int) -> float | None:
            return part / whole if whole else None

        return {
            "ham": self.ham,
            "spam": self.spam,
            "undecided": self.undecided,
            "verdict_fp": share(self.ham_flagged, self.ham),
            "verdict_recall": share(self.spam_flagged, self.spam),
            "band_fp": share(self.ham_band, self.ham),
            "band_recall": share(self.spam_band, self.spam),
            "ham_flagged": self.ham_flagged,
            "spam_missed": self.spam - self.spam_flagged,
            "fp_symbols": self.false_positive_symbols.most_common(TOP),
            "missed_symbols": self.missed_spam_symbols.most_common(TOP),
            "verdicts": dict(self.verdicts),
            "bands": dict(sorted(self.bands.items())),
            "symbols": dict(self.symbols.most_common()),
        }


def raw_of(corpus: Path, mail: de.Mail) -> bytes:
    folder = corpus / de.SOURCES[mail.source] / ("spam" if mail.spam else "ham")
    return (folder / mail.name).read_bytes()


async def evaluate(
    mails: Sequence[de.Mail],
    corpus: Path,
    params: training.Params,
    calibrate: bool,
    settings: Settings,
) -> dict[str, dict[str, object]]:
    checks = build_checks(settings)
    threshold = settings.scanner.spam_threshold
    results: dict[str, dict[str, object]] = {}
    for title, (train_part, test_part) in de.splits(mails).items():
        started = time.perf_counter()
        test_part = de.unseen(train_part, test_part)
        if not train_part or not test_part:
            results[title] = {"skipped": "nothing to train on or nothing to score"}
            continue
        classifier = HeldOutClassifier(settings, de.fit(train_part, params.bits, params, calibrate))
        scanner = Scanner(settings, with_classifier(checks, ClassifierCheck(settings, classifier)))
        tally = Tally()
        for mail in test_part:
            classifier.redacted = mail.source in training.REDACTED
            tally.add(
                mail.spam, await vs.judge(scanner, mail.name, raw_of(corpus, mail)), threshold
            )
        results[title] = tally.figures() | {"train": len(train_part)}
        seconds = time.perf_counter() - started
        print(
            f"{title}: {json.dumps(results[title])} ({seconds:.0f}s)", file=sys.stderr, flush=True
        )
    return results


def markdown(results: dict[str, dict[str, object]], name: str, command: str) -> str:
    def pct(value: object) -> str:
        return "-" if value is None else f"{100 * float(value):.2f}%"  # type: ignore[arg-type]

    lines = [
        f"# Whole verdict on unseen sources: {name}",
        "",
        f"`{command}`",
        "",
        "| split | train | ham | spam | verdict FP (ham not clean) | verdict recall "
        "| band-alone FP | band-alone recall | undecided |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for split, f in results.items():
        if "skipped" in f:
            lines.append(f"| {split} | {f['skipped']} |||||||| ")
            continue
        lines.append(
            f"| {split} | {f['train']} | {f['ham']} | {f['spam']} | {pct(f['verdict_fp'])} "
            f"({f['ham_flagged']}) | {pct(f['verdict_recall'])} ({f['spam_missed']} missed) "
            f"| {pct(f['band_fp'])} | {pct(f['band_recall'])} | {f['undecided']} |"
        )
    lines += ["", "Symbols that scored on the misjudged messages (count of messages):", ""]
    for split, f in results.items():
        if "skipped" in f:
            continue

        def listed(pairs: object) -> str:
            return ", ".join(f"{s} {n}" for s, n in pairs) or "-"  # type: ignore[attr-defined]

        lines.append(
            f"- **{split}**: ham flagged: {listed(f['fp_symbols'])}; "
            f"spam missed: {listed(f['missed_symbols'])}"
        )
    lines += ["", "Rule symbols (bands aside) on every judged ham, share of the split's ham:", ""]
    for split, f in results.items():
        if "skipped" in f or not f["ham"]:
            continue
        common = [
            (k.split(" ", 1)[1], n)
            for k, n in f["symbols"].items()  # type: ignore[attr-defined]
            if k.startswith("ham ")
        ][:TOP]
        shares = ", ".join(f"{s} {100 * n / f['ham']:.1f}%" for s, n in common)  # type: ignore[operator]
        lines.append(f"- **{split}**: {shares or '-'}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/verdict_loso.py")
    de.add_training_options(parser)
    parser.add_argument("--name", default="verdict-loso", help="<output>/<name>.{md,json}")
    parser.add_argument("--output", type=Path, default=de.RESULTS)
    args = parser.parse_args(argv)
    args.cache = Path(args.cache) if args.cache else None
    started = time.perf_counter()
    print("tokenising", file=sys.stderr, flush=True)
    mails = de.load(args.corpus, args.max_per_source, args.cache)
    with FakeDNS() as dns:
        settings = vs.offline_settings(vs.fresh_database(), dns.port)
        results = asyncio.run(
            evaluate(mails, args.corpus, de.params_of(args), args.calibrate, settings)
        )
    command = "bench/verdict_loso.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(results, args.name, command.strip())
    text += f"\nwall time {time.perf_counter() - started:.0f} s\n"
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"{args.name}.md").write_text(text)
    (args.output / f"{args.name}.json").write_text(json.dumps(results, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    logging.disable(logging.WARNING)  # the sender lists' and the store's polls are not news
    sys.exit(main())
