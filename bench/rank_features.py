"""Token families that may only name a source's plumbing: the shipped LR without them, and the
LR averaged with a Robinson/chi-square score, on the four two-class held-out splits.

    .venv/bin/python bench/rank_features.py --name rank-features [--max-per-source 1500]

Same splits, token sets (``detection_eval``'s cache), de-duplication and training as
``bench/detection_eval.py``; per split and variant: AUC, recall at 0.1% / 0.5% FPR of the
probability (ranks only). The variants (docs/classifier.md, "Tried"):

- ``lr``: the shipped model's training;
- ``-trace``: without the hop count (``h:received:N``), the header count and the Date's zone,
  which say more about the collecting mailbox and the sender's locale than about spam (shipped
  since 2026-12-07: the tokenizer no longer makes them, so on its tokens this is ``lr``);
- ``-xheaders``: without the presence and order of ``X-`` headers (list managers, MTAs and
  mailers write them: ``x-beenthere``, ``x-mailman-version``...);
- ``-sourcey``: without tokens that one source uses and the others do not, within a class:
  in at least ``SHARE`` of one training source's messages of a class and in under ``RARE`` of
  every other training source's messages of that class (sources with at least 50 of the class).
  Chosen on the training part only, so it is honest for the held-out source;
- ``lr+robinson``: the LR's logit and the Robinson (s 1) chi-square score, each over its
  standard deviation on the training part, averaged (``rank_variants.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import detection_eval as de
import rank_variants as rv

from services.scanner.classifier.model import hash_tokens
from services.scanner.classifier.training import auc, recall_at_fpr

SHARE = 0.2
RARE = 0.01


def is_trace(token: str) -> bool:
    return token.startswith(("h:received:", "h:count:", "d:zone:"))


def is_xheader(token: str) -> bool:
    if token.startswith("h:x-") and token != "h:x-other":
        return True
    if token.startswith("ho:"):
        return any(side.startswith("x-") for side in token[3:].split(">"))
    return False


def sourcey(train_part: Sequence[de.Mail]) -> set[str]:
    """Tokens frequent in one training source's messages of a class and rare in every other's."""
    found: set[str] = set()
    for spam in (False, True):
        by_source: dict[str, list[de.Mail]] = defaultdict(list)
        for m in train_part:
            if m.spam == spam:
                by_source[m.source].append(m)
        sizable = {s: ms for s, ms in by_source.items() if len(ms) >= 50}
        if len(sizable) < 2:
            continue
        shares = {}
        for source, ms in sizable.items():
            counted: Counter[str] = Counter()
            for m in ms:
                counted.update(m.tokens)
            shares[source] = {t: n / len(ms) for t, n in counted.items()}
        for source, own in shares.items():
            others = [shares[o] for o in shares if o != source]
            for token, share in own.items():
                if share >= SHARE and all(o.get(token, 0.0) < RARE for o in others):
                    found.add(token)
    return found


def without(mails: Sequence[de.Mail], drop: Callable[[str], bool]) -> list[de.Mail]:
    return [replace(m, tokens=frozenset(t for t in m.tokens if not drop(t))) for m in mails]


def figures(score: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {
        "auc": auc(score, labels),
        "recall@fp0.1%": recall_at_fpr(score, labels, 0.001)[0],
        "recall@fp0.5%": recall_at_fpr(score, labels, 0.005)[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/rank_features.py")
    de.add_training_options(parser)
    parser.add_argument("--name", default="rank-features")
    parser.add_argument("--output", type=Path, default=de.RESULTS)
    args = parser.parse_args(argv)
    cache = Path(args.cache) if args.cache else None
    mails = de.load(args.corpus, 0, cache)
    if args.max_per_source:
        mails = de.per_source(mails, args.max_per_source)
    params = de.params_of(args)
    results: dict[str, dict[str, object]] = {}
    for title, (train_part, test_part) in de.splits(mails).items():
        if title not in rv.TWO_CLASS:
            continue
        test_part = de.unseen(train_part, test_part)
        labels = np.array([m.spam for m in test_part])
        started = time.perf_counter()
        out: dict[str, object] = {"n": {"spam": int(labels.sum()), "ham": int((~labels).sum())}}
        dropped = sourcey(train_part)
        out["sourcey_tokens"] = len(dropped)
        variants: dict[str, Callable[[str], bool] | None] = {
            "lr": None,
            "-trace": is_trace,
            "-xheaders": is_xheader,
            "-sourcey": lambda t, d=dropped: t in d,  # type: ignore[misc]
        }
        margins: dict[str, np.ndarray] = {}
        for name, drop in variants.items():
            train = train_part if drop is None else without(train_part, drop)
            test = test_part if drop is None else without(test_part, drop)
            model = de.fit(train, params.bits, params, False)
            margins[name] = np.array(
                [model.margin(hash_tokens(m.tokens, params.bits)) for m in test]
            )
            out[name] = figures(margins[name], labels)
            if name == "lr":
                sample = train[:: max(1, len(train) // 1500)]
                lr_sd = float(
                    np.std([model.margin(hash_tokens(m.tokens, params.bits)) for m in sample])
                )
        # the ensemble: LR + Robinson s 1, each in units of its own training spread
        size = 1 << params.bits
        tr_f = [hash_tokens(m.tokens, params.bits) for m in train_part]
        tr_y = np.array([m.spam for m in train_part])
        spam_df, ham_df = rv.counts(tr_f, tr_y, size)
        table = rv.robinson_table(spam_df, ham_df, int(tr_y.sum()), int((~tr_y).sum()), 1.0)
        table[spam_df + ham_df < 2] = 0.5
        rob = np.array(
            [rv.robinson_score(table, hash_tokens(m.tokens, params.bits)) for m in test_part]
        )
        rob_sd = (
            float(np.std([rv.robinson_score(table, f) for f in tr_f[:: max(1, len(tr_f) // 1500)]]))
            or 1.0
        )
        out["lr+robinson-s1"] = figures(margins["lr"] / lr_sd + rob / rob_sd, labels)
        results[title] = out
        print(
            f"{title} ({time.perf_counter() - started:.0f}s): {json.dumps(out)}",
            file=sys.stderr,
            flush=True,
        )
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"{args.name}.json").write_text(json.dumps(results, indent=1) + "\n")
    forms = ["lr", "-trace", "-xheaders", "-sourcey", "lr+robinson-s1"]
    lines = [
        f"# Token families and an ensemble, cross-source ranking: {args.name}",
        "",
        "AUC / recall at 0.1% FPR / recall at 0.5% FPR",
        "",
        "| form | "
        + " | ".join(f"{t} ({r['n']['ham']} / {r['n']['spam']})" for t, r in results.items())
        + " |",  # type: ignore[index]
        "|---" * (len(results) + 1) + "|",
    ]
    for form in forms:
        cells = []
        for r in results.values():
            f = r[form]
            low, mid = f["recall@fp0.1%"], f["recall@fp0.5%"]  # type: ignore[index]
            cells.append(f"{f['auc']:.4f} / {100 * low:.1f}% / {100 * mid:.1f}%")  # type: ignore[index]
        lines.append(f"| {form} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "tokens dropped as source-specific: "
        + ", ".join(f"{t} {r['sourcey_tokens']}" for t, r in results.items())
    )
    text = "\n".join(lines) + "\n"
    (args.output / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
