"""The classifier's band scores chosen honestly: nested leave-one-source-out.

    .venv/bin/python bench/band_nested.py                    # every message, ~15 minutes here
    .venv/bin/python bench/band_nested.py --max-per-source 800 --name try

The band *bounds* are SpamAssassin's (BAYES_00 from 0 ... BAYES_999 from 0.999, moat/symbols.py);
what is chosen here is the *score* of each band from BAYES_50 up (the ham-side bands, BAYES_00
to BAYES_40, keep their scores): how far the classifier alone moves the verdict, and at which
band it reaches the spam threshold by itself.

**The rest of the verdict does not depend on the classifier.** Every message is judged once by
the real scanner (every check of ``build_checks``, offline as ``bench/verdict_loso.py`` judges:
``X-Spam-*`` removed, DNS that knows no names, an empty database) with the classifier check
replaced by one that finds nothing. Kept per message: the sum of the other findings' table
scores and the action they force. The verdict for a band score ``s`` is then exactly
``decide()``'s: virus/policy forced -> held; allow forced -> clean; spam forced or
``round(rest + s, 3) >= spam_threshold`` -> spam. (Checked: the current table reproduces
``verdict-loso.md`` on every split.)

**Nested procedure.** For each outer split (leave one source out; older -> 2022+):

1. inner leave-one-source-out among the *training* part's sources only: each inner source is
   scored by a model trained on the training part without it (de-duplicated as
   ``detection_eval.unseen`` does);
2. on those inner predictions, the band scores (a grid, 0 to ``--max-score`` in steps of
   ``--step``, strictly rising from BAYES_50 to BAYES_999, as every band table does) that
   maximise the **mean recall over the inner sources that hold spam**, subject to (a) the
   inner verdict FP, all inner ham pooled, <= ``--fp`` (0.3%), and (b) **no inner source's
   ham gets more than ``--fp`` of its own count flagged beyond what the rest of the verdict
   flags with no band score at all** (the known-ham-class rule: foff's 272 ham allow 0
   extra, the newsletters' 28 allow 0).
   Ties: fewer inner FP, then the smaller scores;
3. the outer test part, scored by the model trained on the whole training part, judged with
   those scores: the figures reported. The outer test part is never seen by steps 1-2.

**The shipped table** is step 2 run once on the leave-one-source-out predictions over *all*
permitted sources (each source scored by the model trained on the other four): the inner runs of
an outer split that holds nothing out. Its figures on those splits are in-sample for the table;
the outer figures of the nested runs are the honest ones.

Writes ``bench/results/<name>.{md,json}``. Models' predictions and the scanner's rest scores are
cached in ``--cache`` (our own pickle files, keyed by the tokenizer, the training options and
the files of the checks).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import logging
import pickle
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import detection_eval as de
import verdict_sources as vs

from moat.model import Category, Finding
from moat.settings import ScannerSettings, Settings
from moat.symbols import BAYES_BANDS
from services.scanner.checks import ParsedMessage, build_checks
from services.scanner.classifier import training
from services.scanner.classifier.model import hash_tokens
from services.scanner.classifier.training import auc, recall_at_fpr
from services.scanner.scanning import Scanner
from services.scanner.verdict import decide
from tests.support.fakedns import FakeDNS

ROOT = Path(__file__).resolve().parent.parent
BOUNDS = np.array([lower for _symbol, lower, _score in BAYES_BANDS])
NAMES = [symbol for symbol, _lower, _score in BAYES_BANDS]
CURRENT = np.array([score for _symbol, _lower, score in BAYES_BANDS])
FIRST_CHOSEN = NAMES.index("BAYES_50")  # the bands whose score is chosen: BAYES_50 and up
# What the other findings force, in decide()'s precedence.
NONE, HELD, ALLOW, SPAM = 0, 1, 2, 3
Key = tuple[str, str, bool]  # source, file name, spam


def key_of(mail: de.Mail) -> Key:
    return (mail.source, mail.name, mail.spam)


# --- the rest of the verdict, once per message ------------------------------------------------


@dataclass(frozen=True)
class Rest:
    score: float  # the other findings' table scores, summed (info aside)
    forced: int  # NONE, HELD, ALLOW, SPAM
    symbols: tuple[str, ...]  # the other findings that scored, as "SYMBOL(+s)"


class NoClassifier:
    """The classifier check finding nothing: the band is added afterwards, by table."""

    name = "classifier"

    async def check(self, message: ParsedMessage) -> list[Finding]:
        return []


def rest_of(findings: Sequence[Finding], policy: ScannerSettings) -> Rest:
    """What the findings of every check but the classifier add to the verdict: their table
    scores and the action they force (decide()'s precedence)."""
    verdict = decide(findings, policy)
    counted = verdict.findings
    forced_actions = {policy.symbol_table.action(f.symbol) for f in counted}
    if "virus" in forced_actions or "policy" in forced_actions:
        forced = HELD
    elif "allow" in forced_actions:
        forced = ALLOW
    elif "spam" in forced_actions:
        forced = SPAM
    else:
        forced = NONE
    return Rest(
        verdict.score, forced, tuple(f"{f.symbol}({f.score:+g})" for f in counted if f.score)
    )


async def judge_all(
    mails: Sequence[de.Mail], corpus: Path, settings: Settings
) -> dict[Key, Rest | None]:
    if True:
        checks = tuple(
            NoClassifier() if c.name == "classifier" else c for c in build_checks(settings)
        )
        scanner = Scanner(settings, checks)  # type: ignore[arg-type]
        out: dict[Key, Rest | None] = {}
        for count, mail in enumerate(mails):
            folder = corpus / de.SOURCES[mail.source] / ("spam" if mail.spam else "ham")
            raw = (folder / mail.name).read_bytes()
            result = await scanner.scan(mail.name, vs.without_x_spam(raw), vs.ENVELOPE)
            if any(f.category == Category.FAILURE for f in result.findings):
                out[key_of(mail)] = None
                continue
            out[key_of(mail)] = rest_of(result.findings, settings.scanner)
            if count % 1000 == 999:
                print(f"  judged {count + 1}", file=sys.stderr, flush=True)
    return out


def checks_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted((ROOT / "services/scanner/checks").glob("*.py")):
        digest.update(path.read_bytes())
    for name in ("moat/symbols.py", "moat/settings.py", "services/scanner/verdict.py"):
        digest.update((ROOT / name).read_bytes())
    # the band scores do not change the rest: leave them out of the key
    return digest.hexdigest()[:12]


# --- the models -------------------------------------------------------------------------------


@dataclass
class Part:
    """One held-out part: a title, the model's training part and the (de-duplicated) test part."""

    title: str
    train: list[de.Mail]
    test: list[de.Mail]


def inner_parts(train_part: Sequence[de.Mail]) -> list[Part]:
    """Leave each source of ``train_part`` out of it in turn."""
    parts = []
    for source in sorted({m.source for m in train_part}):
        inner_train = [m for m in train_part if m.source != source]
        inner_test = de.unseen(inner_train, [m for m in train_part if m.source == source])
        if inner_train and inner_test:
            parts.append(Part(source, inner_train, inner_test))
    return parts


class Predictions:
    """Each training part's model, trained once (a pair of sources left out is the same model
    for two outer splits), and its probabilities on the messages asked for."""

    def __init__(
        self, mails: Sequence[de.Mail], params: training.Params, cache: Path | None, tag: str
    ) -> None:
        self.mails = mails
        self.params = params
        self.cache = cache
        self.tag = tag
        self.fitted = 0

    def of(self, part: Part) -> dict[Key, float]:
        names = sorted(f"{m.source}/{m.name}/{m.spam}" for m in part.train)
        digest = hashlib.sha256(("\n".join(names) + self.tag).encode()).hexdigest()[:16]
        path = self.cache / f"pred-{digest}.pickle" if self.cache else None
        known: dict[Key, float] = {}
        if path and path.exists():
            with open(path, "rb") as handle:
                known = pickle.load(handle)
        if any(key_of(m) not in known for m in part.test):
            trained = {key_of(m) for m in part.train}
            wanted = [m for m in self.mails if key_of(m) not in trained]
            started = time.perf_counter()
            model = de.fit(part.train, self.params.bits, self.params, False)
            self.fitted += 1
            # every message outside the training part: the same model serves another outer
            # split's inner run (a pair of sources left out), de-duplicated there by the caller
            known = {}
            known.update(
                (key_of(m), model.probability(hash_tokens(m.tokens, model.bits))) for m in wanted
            )
            print(
                f"  model without {part.title}: {len(part.train)} trained "
                f"({time.perf_counter() - started:.0f}s)",
                file=sys.stderr,
                flush=True,
            )
            if path:
                with open(path, "wb") as handle:
                    pickle.dump(known, handle)
        return {key_of(m): known[key_of(m)] for m in part.test}


# --- the choice -------------------------------------------------------------------------------


@dataclass
class Scored:
    """One held-out part as the table sees it."""

    title: str
    p: npt.NDArray[np.float64]
    spam: npt.NDArray[np.bool_]
    rest: npt.NDArray[np.float64]
    forced: npt.NDArray[np.int8]
    band: npt.NDArray[np.int64]
    symbols: list[tuple[str, ...]]


def scored(title: str, probabilities: dict[Key, float], rests: dict[Key, Rest | None]) -> Scored:
    keys = [k for k in probabilities if rests.get(k) is not None]
    p = np.array([probabilities[k] for k in keys])
    got = [rests[k] for k in keys]
    return Scored(
        title,
        p,
        np.array([k[2] for k in keys], dtype=bool),
        np.array([r.score for r in got if r is not None]),
        np.array([r.forced for r in got if r is not None], dtype=np.int8),
        np.searchsorted(BOUNDS, p, side="right") - 1,
        [r.symbols for r in got if r is not None],
    )


def flagged(
    part: Scored, scores: npt.NDArray[np.float64], threshold: float
) -> npt.NDArray[np.bool_]:
    """decide()'s verdict is not clean, with these band scores."""
    total = np.round(part.rest + scores[part.band], 3)
    return (part.forced == HELD) | (
        (part.forced != ALLOW) & ((part.forced == SPAM) | (total >= threshold))
    )


def grid(step: float, top: float) -> npt.NDArray[np.float64]:
    return np.round(np.arange(0.0, top + step / 2, step), 3)


def choose(
    parts: Sequence[Scored], threshold: float, fp_limit: float, values: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], dict[str, object]]:
    """The band scores (BAYES_50 and up, strictly rising, from ``values``) that maximise the mean
    recall over ``parts`` with spam, under the pooled and per-source FP limits (module doc).

    Separable: a message's verdict depends on one band's score, so each part's flagged counts
    are sums of per-band tables; every non-decreasing combination is enumerated."""
    chosen_bands = range(FIRST_CHOSEN, len(NAMES))
    n_values = len(values)
    # strictly rising (a likelier band never counts less), the first above BAYES_40's score
    usable = [i for i, v in enumerate(values) if v > CURRENT[FIRST_CHOSEN - 1]]
    combos = np.array(list(itertools.combinations(usable, len(chosen_bands))), dtype=np.int16)
    ham_total = sum(int((~p.spam).sum()) for p in parts)
    pooled_fp = np.zeros(len(combos), dtype=np.int64)
    recall_sum = np.zeros(len(combos))
    feasible = np.ones(len(combos), dtype=bool)
    with_spam = 0
    for part in parts:
        fixed = CURRENT.copy()
        ham, spam = ~part.spam, part.spam
        tp = np.zeros(len(combos), dtype=np.int64)
        fp = np.zeros(len(combos), dtype=np.int64)
        low = part.band < FIRST_CHOSEN
        # bands below BAYES_50 keep their scores
        base = flagged(part, fixed, threshold)
        fp += int((base & ham & low).sum())
        tp += int((base & spam & low).sum())
        for column, band in enumerate(chosen_bands):
            in_band = part.band == band
            hits_ham = np.zeros(n_values, dtype=np.int64)
            hits_spam = np.zeros(n_values, dtype=np.int64)
            for index, value in enumerate(values):
                scores = fixed.copy()
                scores[band] = value
                f = flagged(part, scores, threshold) & in_band
                hits_ham[index] = int((f & ham).sum())
                hits_spam[index] = int((f & spam).sum())
            fp += hits_ham[combos[:, column]]
            tp += hits_spam[combos[:, column]]
        # what the rest of the verdict flags with no band score at all (every band 0)
        floor = int((flagged(part, np.zeros(len(NAMES)), threshold) & ham).sum())
        allowed = floor + int(fp_limit * int(ham.sum()))
        feasible &= fp <= allowed
        pooled_fp += fp
        if spam.any():
            recall_sum += tp / int(spam.sum())
            with_spam += 1
    feasible &= pooled_fp <= fp_limit * ham_total
    if not feasible.any():
        raise ValueError("no band scores meet the FP limits")
    mean_recall = recall_sum / max(1, with_spam)
    # maximise recall; ties: fewer FP, then smaller scores
    order = np.lexsort((combos.sum(axis=1), pooled_fp, -np.round(mean_recall, 9)))
    best = next(i for i in order if feasible[i])
    table = CURRENT.copy()
    table[FIRST_CHOSEN:] = values[combos[best]]
    return table, {
        "inner_mean_recall": float(mean_recall[best]),
        "inner_fp": int(pooled_fp[best]),
        "inner_ham": ham_total,
        "feasible": int(feasible.sum()),
        "combinations": len(combos),
    }


# --- figures ----------------------------------------------------------------------------------


def figures(part: Scored, table: npt.NDArray[np.float64], threshold: float) -> dict[str, object]:
    held = flagged(part, table, threshold)
    ham, spam = ~part.spam, part.spam
    out: dict[str, object] = {
        "ham": int(ham.sum()),
        "spam": int(spam.sum()),
        "verdict_fp": float(held[ham].mean()) if ham.any() else None,
        "verdict_recall": float(held[spam].mean()) if spam.any() else None,
        "ham_flagged": int((held & ham).sum()),
        "spam_missed": int((~held & spam).sum()),
    }
    both = bool(ham.any() and spam.any())
    out["auc"] = auc(part.p, part.spam) if both else None
    for target in (0.001, 0.005):
        out[f"recall@fp{100 * target:g}%"] = (
            recall_at_fpr(part.p, part.spam, target)[0] if both else None
        )
    # the verdict's score, not the probability: what the whole scanner ranks
    total = part.rest + table[part.band] + np.where(part.forced == HELD, 100.0, 0.0)
    out["verdict_score_auc"] = auc(total, part.spam) if both else None
    out["brier"] = float(np.mean((part.p - part.spam) ** 2))
    out["ece"] = de.ece(part.p, part.spam)
    fp_symbols: Counter[str] = Counter()
    for index in np.flatnonzero(held & ham):
        fp_symbols.update(s for s in part.symbols[index] if "(+" in s)
        fp_symbols[f"{NAMES[part.band[index]]}({table[part.band[index]]:+g})"] += 1
    out["fp_symbols"] = fp_symbols.most_common(6)
    return out


def table_text(table: Iterable[float]) -> str:
    return ", ".join(
        f"{name} {score:g}" for name, score in list(zip(NAMES, table, strict=True))[FIRST_CHOSEN:]
    )


def markdown(results: dict[str, object], name: str, command: str) -> str:
    def pct(value: object) -> str:
        return "-" if value is None else f"{100 * float(value):.2f}%"  # type: ignore[arg-type]

    def num(value: object) -> str:
        return "-" if value is None else f"{float(value):.4f}"  # type: ignore[arg-type]

    lines = [
        f"# Band scores chosen by nested leave-one-source-out: {name}",
        "",
        f"`{command}`",
        "",
        "Outer split: verdict FP / recall with the current table (before) and with the table its "
        "inner runs chose (after); the classifier's own figures (the same model for both).",
        "",
        "| split (ham / spam) | verdict FP before → after | verdict recall before → after "
        "| verdict-score AUC before → after | AUC | recall@0.1% FP | recall@0.5% FP "
        "| Brier | ECE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    outer = results["outer"]
    assert isinstance(outer, dict)
    for split, f in outer.items():
        b, a = f["before"], f["after"]
        lines.append(
            f"| {split} ({b['ham']} / {b['spam']}) | {pct(b['verdict_fp'])} ({b['ham_flagged']}) → "
            f"{pct(a['verdict_fp'])} ({a['ham_flagged']}) | {pct(b['verdict_recall'])} → "
            f"**{pct(a['verdict_recall'])}** | {num(b['verdict_score_auc'])} → "
            f"{num(a['verdict_score_auc'])} | {num(a['auc'])} | {pct(a['recall@fp0.1%'])} | "
            f"{pct(a['recall@fp0.5%'])} | {num(a['brier'])} | {num(a['ece'])} |"
        )
    lines += ["", "Tables chosen by each outer split's inner runs (BAYES_00..40 unchanged):", ""]
    for split, f in outer.items():
        lines.append(
            f"- **{split}** (inner: {', '.join(f['inner_sources'])}): {table_text(f['table'])}; "
            f"inner mean recall {pct(f['choice']['inner_mean_recall'])}, inner FP "
            f"{f['choice']['inner_fp']} of {f['choice']['inner_ham']}"
        )
    lines += ["", "Ham flagged after, by symbol (outer):", ""]
    for split, f in outer.items():
        listed = ", ".join(f"{s} {n}" for s, n in f["after"]["fp_symbols"]) or "-"
        lines.append(f"- **{split}**: {listed}")
    shipped = results["shipped"]
    assert isinstance(shipped, dict)
    lines += [
        "",
        "## The table to ship: chosen on the leave-one-source-out runs over all sources",
        "",
        f"{table_text(shipped['table'])} (inner mean recall "
        f"{pct(shipped['choice']['inner_mean_recall'])}, inner FP {shipped['choice']['inner_fp']} "
        f"of {shipped['choice']['inner_ham']}; in-sample for the table):",
        "",
        "| source left out | verdict FP current → shipped | verdict recall current → shipped |",
        "|---|---|---|",
    ]
    for split, f in shipped["per_source"].items():
        b, a = f["before"], f["after"]
        lines.append(
            f"| {split} | {pct(b['verdict_fp'])} ({b['ham_flagged']}) → {pct(a['verdict_fp'])} "
            f"({a['ham_flagged']}) | {pct(b['verdict_recall'])} → {pct(a['verdict_recall'])} |"
        )
    return "\n".join(lines) + "\n"


# --- the run ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/band_nested.py")
    de.add_training_options(parser)
    parser.add_argument("--fp", type=float, default=0.003, help="inner FP limit (share of ham)")
    parser.add_argument("--step", type=float, default=0.25, help="score grid step")
    parser.add_argument("--max-score", type=float, default=5.5, help="score grid top")
    parser.add_argument("--name", default="band-nested", help="<output>/<name>.{md,json}")
    parser.add_argument("--output", type=Path, default=de.RESULTS)
    args = parser.parse_args(argv)
    if args.calibrate:
        parser.error("--calibrate is not supported here")
    cache = Path(args.cache) if args.cache else None
    args.cache = cache
    started = time.perf_counter()
    print("tokenising", file=sys.stderr, flush=True)
    mails = de.load(args.corpus, args.max_per_source, cache)
    params = de.params_of(args)

    rest_path = cache / f"rest-{checks_hash()}-{args.max_per_source}.pickle" if cache else None
    if rest_path and rest_path.exists():
        with open(rest_path, "rb") as handle:
            rests: dict[Key, Rest | None] = pickle.load(handle)
    else:
        print("judging every message (no classifier)", file=sys.stderr, flush=True)
        with FakeDNS() as dns:
            settings = vs.offline_settings(vs.fresh_database(), dns.port)
            rests = asyncio.run(judge_all(mails, args.corpus, settings))
        if rest_path:
            with open(rest_path, "wb") as handle:
                pickle.dump(rests, handle)

    threshold = Settings().scanner.spam_threshold
    values = grid(args.step, args.max_score)
    tokenizer = hashlib.sha256(
        (ROOT / "services/scanner/classifier/tokenizer.py").read_bytes()
    ).hexdigest()[:12]
    predictions = Predictions(
        mails, params, cache, f"c={params.c} balance={params.balance} tokenizer={tokenizer}"
    )
    results: dict[str, object] = {}
    outer: dict[str, object] = {}
    for title, (train_part, test_part) in de.splits(mails).items():
        test_part = de.unseen(train_part, test_part)
        if not train_part or not test_part:
            continue
        inner = [scored(p.title, predictions.of(p), rests) for p in inner_parts(train_part)]
        table, choice = choose(inner, threshold, args.fp, values)
        held_out = scored(title, predictions.of(Part(title, train_part, test_part)), rests)
        outer[title] = {
            "inner_sources": [p.title for p in inner],
            "table": table.tolist(),
            "choice": choice,
            "before": figures(held_out, CURRENT, threshold),
            "after": figures(held_out, table, threshold),
        }
        print(f"{title}: {json.dumps(outer[title])}", file=sys.stderr, flush=True)
    results["outer"] = outer

    everything = Part("nothing", mails, [])
    loso = [scored(p.title, predictions.of(p), rests) for p in inner_parts(everything.train)]
    table, choice = choose(loso, threshold, args.fp, values)
    results["shipped"] = {
        "table": table.tolist(),
        "choice": choice,
        "per_source": {
            part.title: {
                "before": figures(part, CURRENT, threshold),
                "after": figures(part, table, threshold),
            }
            for part in loso
        },
    }
    results["models_fitted"] = predictions.fitted
    results["grid"] = values.tolist()
    results["wall_seconds"] = round(time.perf_counter() - started)
    command = "bench/band_nested.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(results, args.name, command.strip())
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"{args.name}.md").write_text(text)
    (args.output / f"{args.name}.json").write_text(json.dumps(results, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    sys.exit(main())
