"""Which rules help on mail from sources the classifier never saw: per symbol, per source.

    .venv/bin/python bench/rule_stats.py                         # every message, ~5 minutes
    .venv/bin/python bench/rule_stats.py --off LIST_ID_UNSUBSCRIBE --score HTML_ONLY=0.5

Every message is judged once by the real scanner as ``bench/band_nested.py`` judges it (every
check of ``build_checks`` but the classifier, ``X-Spam-*`` removed, DNS that knows no names, an
empty database); kept per message: the symbols every check emitted. That is cached (keyed by the
checks' code, the table and the settings), so re-scoring with another table is instant. The
classifier's probabilities come from band_nested's model cache (``Predictions``): per split
the model trained on the training part only.

Printed and written to ``bench/results/<name>.md``:

1. per symbol (bands aside), its hit rate on ham and on spam **per source** (the brief's keep
   test: a rule is kept only when its ham rate is tiny on every source with ham and it fires on
   a meaningful share of spam on at least two sources);
2. per split, the verdict FP and recall and the **verdict-score AUC** (the table's score, band
   included, as the ranking) next to the **probability-alone AUC**, with the *base* table
   (``--base``: the rule symbols named there scored 0, i.e. the table before this work) and the
   *current* one (moat/symbols.py, with ``--off``/``--score`` applied).

A symbol the table scores 0 is not emitted by the headers check: measure a candidate with a
non-zero score in moat/symbols.py, and turn it off here with ``--off``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import pickle
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import band_nested as bn
import detection_eval as de
import verdict_sources as vs

from moat.model import Category
from moat.settings import Settings
from moat.symbols import BAYES_BANDS, SYMBOLS
from services.scanner.checks import build_checks
from services.scanner.classifier.training import auc
from services.scanner.scanning import Scanner
from tests.support.fakedns import FakeDNS

ROOT = Path(__file__).resolve().parent.parent
BANDS = frozenset(name for name, _lower, _score in BAYES_BANDS)
# The rules this work added: scored 0 in the "base" table (the table before it).
NEW_RULES = ("SUBJ_ALL_CAPS", "MIME_BASE64_TEXT")
# The rules this work halved: their score before it, in the base table.
HALVED = {"FROM_REPLYTO_MISMATCH": 1.0, "HTML_HIDDEN_TEXT": 1.5}
Table = Mapping[str, tuple[float, str | None]]  # symbol: (score, forced action)


async def emitted(
    mails: Sequence[de.Mail], corpus: Path, settings: Settings
) -> dict[bn.Key, tuple[str, ...] | None]:
    """Every symbol every check but the classifier emits, per message (None: a check failed)."""
    checks = tuple(
        bn.NoClassifier() if c.name == "classifier" else c for c in build_checks(settings)
    )
    scanner = Scanner(settings, checks)  # type: ignore[arg-type]
    out: dict[bn.Key, tuple[str, ...] | None] = {}
    for count, mail in enumerate(mails):
        raw = vs.without_x_spam(vs_raw(corpus, mail))
        result = await scanner.scan(mail.name, raw, vs.ENVELOPE)
        failed = any(f.category == Category.FAILURE for f in result.findings)
        out[bn.key_of(mail)] = None if failed else tuple(f.symbol for f in result.findings)
        if count % 2000 == 1999:
            print(f"  judged {count + 1}", file=sys.stderr, flush=True)
    return out


def vs_raw(corpus: Path, mail: de.Mail) -> bytes:
    folder = corpus / de.SOURCES[mail.source] / ("spam" if mail.spam else "ham")
    return (folder / mail.name).read_bytes()


def table_of(overrides: Mapping[str, float]) -> Table:
    table = {name: (s.score, s.action) for name, s in SYMBOLS.items()}
    for name, score in overrides.items():
        if name not in table:
            raise SystemExit(f"unknown symbol {name}")
        table[name] = (score, table[name][1])
    return table


@dataclass
class Judged:
    """One split's held-out messages as a table sees them."""

    title: str
    p: npt.NDArray[np.float64]
    spam: npt.NDArray[np.bool_]
    band: npt.NDArray[np.int64]
    symbols: list[tuple[str, ...]]


def rescore(part: Judged, table: Table, threshold: float) -> dict[str, object]:
    """decide()'s verdict with ``table``, and the verdict score as a ranking."""
    band_scores = np.array([table[name][0] for name, _lower, _score in BAYES_BANDS])
    score = np.zeros(len(part.p))
    held = np.zeros(len(part.p), dtype=bool)
    for index, symbols in enumerate(part.symbols):
        actions = {table[s][1] for s in symbols if s in table}
        rest = sum(table[s][0] for s in symbols if s in table)
        total = round(rest + band_scores[part.band[index]], 3)
        forced_held = "virus" in actions or "policy" in actions
        score[index] = total + (100.0 if forced_held else 0.0)
        held[index] = forced_held or (
            "allow" not in actions and ("spam" in actions or total >= threshold)
        )
    ham, spam = ~part.spam, part.spam
    both = bool(ham.any() and spam.any())
    return {
        "ham": int(ham.sum()),
        "spam": int(spam.sum()),
        "fp": int((held & ham).sum()),
        "caught": int((held & spam).sum()),
        "verdict_score_auc": auc(score, part.spam) if both else None,
        "probability_auc": auc(part.p, part.spam) if both else None,
    }


def hit_rates(
    mails: Sequence[de.Mail], found: Mapping[bn.Key, tuple[str, ...] | None]
) -> dict[str, dict[str, tuple[int, int, int, int]]]:
    """symbol -> source -> (ham hits, ham, spam hits, spam)."""
    totals: Counter[tuple[str, bool]] = Counter()
    hits: Counter[tuple[str, str, bool]] = Counter()
    for mail in mails:
        symbols = found.get(bn.key_of(mail))
        if symbols is None:
            continue
        totals[(mail.source, mail.spam)] += 1
        for symbol in set(symbols):
            hits[(symbol, mail.source, mail.spam)] += 1
    sources = sorted({m.source for m in mails})
    out: dict[str, dict[str, tuple[int, int, int, int]]] = {}
    for symbol in sorted({h[0] for h in hits}):
        if symbol in BANDS or symbol.endswith("_NONE"):
            continue
        out[symbol] = {
            source: (
                hits[(symbol, source, False)],
                totals[(source, False)],
                hits[(symbol, source, True)],
                totals[(source, True)],
            )
            for source in sources
        }
    return out


def keep_test(
    rates: Mapping[str, tuple[int, int, int, int]], ham_limit: float, spam_min: float
) -> bool:
    """The brief's test: ham rate <= ham_limit on every source with ham, and >= spam_min of the
    spam on at least two sources."""
    ham_ok = all(h <= ham_limit * n for h, n, _s, _m in rates.values() if n)
    spam_sources = sum(1 for _h, _n, s, m in rates.values() if m and s >= spam_min * m)
    return ham_ok and spam_sources >= 2


def markdown(
    rates: Mapping[str, Mapping[str, tuple[int, int, int, int]]],
    splits: Mapping[str, Mapping[str, Mapping[str, object]]],
    args: argparse.Namespace,
    command: str,
) -> str:
    sources = sorted({s for r in rates.values() for s in r})
    lines = [
        f"# Rule hit rates per source, and the verdict with and without them: {args.name}",
        "",
        f"`{command}`",
        "",
        "Per symbol: ham hit rate / spam hit rate on each source (offline scanner: no DNS, so "
        "no authentication passes; bands aside). **keep**: ham <= "
        f"{100 * args.ham_limit:g}% on every source with ham and spam >= "
        f"{100 * args.spam_min:g}% on two sources or more.",
        "",
        "| symbol | score | " + " | ".join(sources) + " | keep |",
        "|---|---:|" + "---|" * len(sources) + "---|",
    ]

    def share(hit: int, whole: int) -> str:
        return "-" if not whole else f"{100 * hit / whole:.1f}%"

    for symbol, per_source in rates.items():
        cells = [f"{share(h, n)} / {share(s, m)}" for h, n, s, m in per_source.values()]
        score = SYMBOLS[symbol].score if symbol in SYMBOLS else float("nan")
        keep = "yes" if keep_test(per_source, args.ham_limit, args.spam_min) else ""
        lines.append(f"| `{symbol}` | {score:g} | " + " | ".join(cells) + f" | {keep} |")
    lines += [
        "",
        "Per split (held-out part; the model trained on the rest): verdict FP / recall and the "
        "verdict score's AUC, base table (before) → current table; the probability alone's AUC.",
        "",
        "| split (ham / spam) | FP base → current | recall base → current "
        "| verdict-score AUC base → current | probability AUC |",
        "|---|---|---|---|---|",
    ]

    def pct(part: int, whole: object) -> str:
        return "-" if not whole else f"{100 * part / int(whole):.2f}% ({part})"  # type: ignore[call-overload]

    def num(value: object) -> str:
        return "-" if value is None else f"{float(value):.4f}"  # type: ignore[arg-type]

    for title, pair in splits.items():
        b, c = pair["base"], pair["current"]
        lines.append(
            f"| {title} ({b['ham']} / {b['spam']}) | {pct(b['fp'], b['ham'])} → "  # type: ignore[arg-type]
            f"{pct(c['fp'], c['ham'])} | {pct(b['caught'], b['spam'])} → "  # type: ignore[arg-type]
            f"{pct(c['caught'], c['spam'])} | {num(b['verdict_score_auc'])} → "  # type: ignore[arg-type]
            f"{num(c['verdict_score_auc'])} | {num(c['probability_auc'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/rule_stats.py")
    de.add_training_options(parser)
    parser.add_argument("--off", action="append", default=[], help="score this symbol 0")
    parser.add_argument("--score", action="append", default=[], help="SYMBOL=score")
    parser.add_argument(
        "--base", default=",".join(NEW_RULES), help="symbols scored 0 in the base table"
    )
    parser.add_argument("--base-score", action="append", default=[], help="SYMBOL=score (base)")
    parser.add_argument("--ham-limit", type=float, default=0.005)
    parser.add_argument("--spam-min", type=float, default=0.02)
    parser.add_argument("--name", default="rule-stats")
    parser.add_argument("--output", type=Path, default=de.RESULTS)
    args = parser.parse_args(argv)
    if args.calibrate:
        parser.error("--calibrate is not supported here")
    cache = Path(args.cache) if args.cache else None
    started = time.perf_counter()
    mails = de.load(args.corpus, args.max_per_source, cache)
    params = de.params_of(args)

    digest = hashlib.sha256(bn.checks_hash().encode())
    path = (
        cache / f"symbols-{digest.hexdigest()[:12]}-{args.max_per_source}.pickle" if cache else None
    )
    if path and path.exists():
        with open(path, "rb") as handle:
            found: dict[bn.Key, tuple[str, ...] | None] = pickle.load(handle)
    else:
        print("judging every message (no classifier)", file=sys.stderr, flush=True)
        with FakeDNS() as dns:
            settings = vs.offline_settings(vs.fresh_database(), dns.port)
            found = asyncio.run(emitted(mails, args.corpus, settings))
        if path:
            with open(path, "wb") as handle:
                pickle.dump(found, handle)

    def pairs(items: list[str]) -> dict[str, float]:
        return {k: float(v) for k, _, v in (i.partition("=") for i in items)}

    current = table_of({name: 0.0 for name in args.off} | pairs(args.score))
    base = table_of({n: 0.0 for n in args.base.split(",") if n} | HALVED | pairs(args.base_score))
    threshold = Settings().scanner.spam_threshold
    tokenizer = hashlib.sha256(
        (ROOT / "services/scanner/classifier/tokenizer.py").read_bytes()
    ).hexdigest()[:12]
    predictions = bn.Predictions(
        mails, params, cache, f"c={params.c} balance={params.balance} tokenizer={tokenizer}"
    )
    splits: dict[str, dict[str, dict[str, object]]] = {}
    for title, (train_part, test_part) in de.splits(mails).items():
        test_part = de.unseen(train_part, test_part)
        if not train_part or not test_part:
            continue
        probabilities = predictions.of(bn.Part(title, train_part, test_part))
        keys = [k for k in probabilities if found.get(k) is not None]
        p = np.array([probabilities[k] for k in keys])
        part = Judged(
            title,
            p,
            np.array([k[2] for k in keys], dtype=bool),
            np.searchsorted(bn.BOUNDS, p, side="right") - 1,
            [found[k] or () for k in keys],
        )
        splits[title] = {
            "base": rescore(part, base, threshold),
            "current": rescore(part, current, threshold),
        }
    rates = hit_rates(mails, found)
    command = "bench/rule_stats.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(rates, splits, args, command.strip())
    text += f"\nwall time {time.perf_counter() - started:.0f} s\n"
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"{args.name}.md").write_text(text)
    (args.output / f"{args.name}.json").write_text(
        json.dumps({"rates": rates, "splits": splits}, indent=1) + "\n"
    )
    print(text)
    return 0


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    sys.exit(main())
