"""Model forms against the shipped logistic regression, for the cross-source *ranking* only.

    .venv/bin/python bench/rank_variants.py --max-per-source 1500 --name rank-1500
    .venv/bin/python bench/rank_variants.py --name rank-all

Same splits, de-duplication and token sets as ``bench/detection_eval.py`` (its cache), the four
two-class splits only (leave out spamassassin, mailing-lists, foff; older -> 2022+). Per split and
per model form: AUC and recall at 0.1% / 0.5% FPR of a score (any monotone score: the figures
are ranks), and scoring CPU per message. The forms (docs/classifier.md, "Tried, did not help"):

- ``lr``: the shipped model (training.train, L2 logistic loss on unit-length binary features);
- ``nb``: multinomial Naive Bayes on binarised features (Wang & Manning 2012's MNB): the sum
  of the log-count ratios r = log(p/|p|) - log(q/|q|) (Laplace alpha) of the message's tokens;
  ``nb-norm``: the same sum over sqrt(n), as the LR normalises;
- ``nblr``: NBSVM-style, the logistic regression on features scaled by |r| ... by r (x * r),
  unit length, C as the shipped model;
- ``robinson-s<s>``: SpamAssassin/SpamBayes's Bayes: each token's Robinson probability
  f = (s x + n p) / (s + n) (x = 0.5, p = b / (b + g) on class frequencies), only the up to 150
  tokens with |f - 0.5| >= 0.1, Fisher's chi-square combining; the score is
  log Q(-2 sum ln f) - log Q(-2 sum ln(1 - f)) (the indicator (S - H + 1) / 2 before it
  saturates, so ties do not blur the ranking);
  ``robinson-sa``: SpamAssassin's chi-square constants (x 0.538, s 0.1, min strength 0.346);
- ``lr+<form>``: the average, in standardised log-odds, of the LR and the form (each scaled by
  its standard deviation on the training part).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import detection_eval as de

from services.scanner.classifier import training
from services.scanner.classifier.model import hash_tokens, scale
from services.scanner.classifier.training import auc, recall_at_fpr

Vector = npt.NDArray[np.float64]
TWO_CLASS = (
    "leave out spamassassin",
    "leave out mailing-lists",
    "leave out foff",
    "older -> 2022+",
)


def counts(features: Sequence[npt.NDArray[np.int64]], spam: npt.NDArray[np.bool_], size: int):
    spam_df = np.zeros(size)
    ham_df = np.zeros(size)
    for f, s in zip(features, spam, strict=True):
        (spam_df if s else ham_df)[f] += 1
    return spam_df, ham_df


def log_ratio(spam_df: Vector, ham_df: Vector, alpha: float, min_df: int) -> Vector:
    p, q = spam_df + alpha, ham_df + alpha
    r = np.log(p / p.sum()) - np.log(q / q.sum())
    r[(spam_df + ham_df) < min_df] = 0.0
    return r


def lr_scaled(
    features: Sequence[npt.NDArray[np.int64]],
    spam: npt.NDArray[np.bool_],
    size: int,
    value_of: Vector,
    c: float,
    min_df: int,
    df: Vector,
) -> tuple[Vector, float]:
    """training.train's loss with each feature's value multiplied by ``value_of`` before the
    row is normalised to unit length (NBSVM's x * r)."""
    from scipy.optimize import minimize
    from scipy.sparse import csr_matrix

    columns = np.flatnonzero((df >= min_df) & (value_of != 0))
    column_of = np.full(size, -1, dtype=np.int64)
    column_of[columns] = np.arange(len(columns))
    rows, cols, values = [], [], []
    for row, f in enumerate(features):
        v = value_of[f]
        norm = np.sqrt(float((v * v).sum())) or 1.0
        kept = column_of[f]
        ok = kept >= 0
        rows.append(np.full(int(ok.sum()), row))
        cols.append(kept[ok])
        values.append(v[ok] / norm)
    matrix = csr_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(features), len(columns)),
    )
    sign = np.where(spam, 1.0, -1.0)
    count = len(columns)

    def loss(vector: Vector) -> tuple[float, Vector]:
        w, b = vector[:count], vector[count]
        m = sign * (matrix @ w + b)
        value = float(np.logaddexp(0.0, -m).sum()) + 0.5 * float(w @ w) / c
        slope = -sign * np.exp(-np.logaddexp(0.0, m))
        return value, np.concatenate([matrix.T @ slope + w / c, [slope.sum()]])

    result = minimize(
        loss, np.zeros(count + 1), jac=True, method="L-BFGS-B", options={"maxiter": 1000}
    )
    weights = np.zeros(size)
    weights[columns] = result.x[:count]
    return weights, float(result.x[count])


def robinson_table(
    spam_df: Vector, ham_df: Vector, n_spam: int, n_ham: int, s: float, x: float = 0.5
) -> Vector:
    b = spam_df / max(1, n_spam)
    g = ham_df / max(1, n_ham)
    n = spam_df + ham_df
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(b + g > 0, b / (b + g), 0.5)
    return (s * x + n * p) / (s + n)


def robinson_score(
    f_all: Vector, feats: npt.NDArray[np.int64], strength: float = 0.1, top: int = 150
) -> float:
    from scipy.stats import chi2

    f = f_all[feats]
    f = f[np.abs(f - 0.5) >= strength]
    if not len(f):
        return 0.0
    if len(f) > top:
        f = f[np.argsort(-np.abs(f - 0.5))[:top]]
    f = np.clip(f, 1e-6, 1 - 1e-6)
    dof = 2 * len(f)
    hammy = float(chi2.logsf(-2.0 * np.log(f).sum(), dof))  # small when the tokens are hammy
    spammy = float(chi2.logsf(-2.0 * np.log1p(-f).sum(), dof))
    return hammy - spammy


def figures(score: Vector, labels: npt.NDArray[np.bool_]) -> dict[str, float]:
    return {
        "auc": auc(score, labels),
        "recall@fp0.1%": recall_at_fpr(score, labels, 0.001)[0],
        "recall@fp0.5%": recall_at_fpr(score, labels, 0.005)[0],
    }


def fast_auc(score: Vector, labels: npt.NDArray[np.bool_]) -> float:
    from scipy.stats import rankdata

    ranks = rankdata(score)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def bootstrap(
    scores: dict[str, Vector], labels: npt.NDArray[np.bool_], rounds: int, seed: int = 1
) -> dict[str, dict[str, float]]:
    """Paired, class-stratified bootstrap of each form's difference to the LR: the 2.5th and
    97.5th percentiles of delta AUC and delta recall at 0.5% FPR (how much of a difference
    another sample of the same sources would undo)."""
    rng = np.random.default_rng(seed)
    spam, ham = np.flatnonzero(labels), np.flatnonzero(~labels)
    deltas: dict[str, list[tuple[float, float]]] = {name: [] for name in scores if name != "lr"}
    for _ in range(rounds):
        chosen = np.concatenate([rng.choice(spam, len(spam)), rng.choice(ham, len(ham))])
        y = labels[chosen]
        base = scores["lr"][chosen]
        base_auc, base_recall = fast_auc(base, y), recall_at_fpr(base, y, 0.005)[0]
        for name in deltas:
            other = scores[name][chosen]
            deltas[name].append(
                (fast_auc(other, y) - base_auc, recall_at_fpr(other, y, 0.005)[0] - base_recall)
            )
    out = {}
    for name, pairs in deltas.items():
        values = np.array(pairs)
        low, high = np.percentile(values, [2.5, 97.5], axis=0)
        out[name] = {
            "d_auc_lo": float(low[0]),
            "d_auc_hi": float(high[0]),
            "d_recall@fp0.5%_lo": float(low[1]),
            "d_recall@fp0.5%_hi": float(high[1]),
        }
    return out


def evaluate_split(
    train_part: Sequence[de.Mail],
    test_part: Sequence[de.Mail],
    bits: int,
    c: float,
    rounds: int = 0,
) -> dict[str, dict[str, float]]:
    size = 1 << bits
    tr_f = [hash_tokens(m.tokens, bits) for m in train_part]
    te_f = [hash_tokens(m.tokens, bits) for m in test_part]
    tr_y = np.array([m.spam for m in train_part])
    te_y = np.array([m.spam for m in test_part])
    spam_df, ham_df = counts(tr_f, tr_y, size)
    df = spam_df + ham_df
    n_spam, n_ham = int(tr_y.sum()), int((~tr_y).sum())
    prior = np.log(max(1, n_spam) / max(1, n_ham))
    scorers: dict[str, Callable[[npt.NDArray[np.int64]], float]] = {}

    model = training.train(
        [
            training.Example(m.name, m.spam, f, m.when, m.source)
            for m, f in zip(train_part, tr_f, strict=False)
        ],
        training.Params(c=c),
    )
    scorers["lr"] = model.margin
    for alpha in (1.0, 0.1):
        r = log_ratio(spam_df, ham_df, alpha, 2)
        scorers[f"nb-a{alpha:g}"] = lambda f, r=r: prior + float(r[f].sum())
        scorers[f"nb-norm-a{alpha:g}"] = lambda f, r=r: float(r[f].sum()) * scale(f)
    r = log_ratio(spam_df, ham_df, 1.0, 2)
    w, b = lr_scaled(tr_f, tr_y, size, r, c, 2, df)

    def nblr(f: npt.NDArray[np.int64], w: Vector = w, b: float = b, r: Vector = r) -> float:
        v = r[f]
        norm = np.sqrt(float((v * v).sum())) or 1.0
        return b + float((w[f] * v).sum()) / norm

    scorers["nblr"] = nblr
    for s in (0.16, 1.0):
        table = robinson_table(spam_df, ham_df, n_spam, n_ham, s)
        table[df < 2] = 0.5
        scorers[f"robinson-s{s:g}"] = lambda f, t=table: robinson_score(t, f)
    # SpamAssassin's own chi-square constants (Bayes.pm): x 0.538, s 0.100, min strength 0.346
    table = robinson_table(spam_df, ham_df, n_spam, n_ham, 0.1, 0.538)
    table[df < 2] = 0.5
    scorers["robinson-sa"] = lambda f, t=table: robinson_score(t, f, 0.346)
    table = robinson_table(spam_df, ham_df, n_spam, n_ham, 1.0)
    table[df < 2] = 0.5
    scorers["robinson-s1-mps0.346"] = lambda f, t=table: robinson_score(t, f, 0.346)

    out: dict[str, dict[str, float]] = {}
    test_scores: dict[str, Vector] = {}
    train_sd: dict[str, float] = {}
    for name, scorer in scorers.items():
        started = time.process_time()
        test_scores[name] = np.array([scorer(f) for f in te_f])
        ms = (time.process_time() - started) * 1000 / max(1, len(te_f))
        sample = tr_f[:: max(1, len(tr_f) // 1500)]
        train_sd[name] = float(np.std([scorer(f) for f in sample])) or 1.0
        out[name] = {**figures(test_scores[name], te_y), "score_ms": ms}
    for name in list(scorers):
        if name == "lr":
            continue
        combined = test_scores["lr"] / train_sd["lr"] + test_scores[name] / train_sd[name]
        out[f"lr+{name}"] = figures(combined, te_y)
        test_scores[f"lr+{name}"] = combined
    if rounds:
        for name, interval in bootstrap(test_scores, te_y, rounds).items():
            out[name].update(interval)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/rank_variants.py")
    de.add_training_options(parser)
    parser.add_argument("--name", default="rank")
    parser.add_argument(
        "--bootstrap", type=int, default=0, help="rounds of the paired bootstrap against lr"
    )
    parser.add_argument("--output", type=Path, default=de.RESULTS)
    args = parser.parse_args(argv)
    cache = Path(args.cache) if args.cache else None
    # the full token cache, subsampled as detection_eval.load would (no re-tokenising)
    mails = de.load(args.corpus, 0, cache)
    if args.max_per_source:
        mails = de.per_source(mails, args.max_per_source)
    params = de.params_of(args)
    results: dict[str, object] = {}
    for title, (train_part, test_part) in de.splits(mails).items():
        if title not in TWO_CLASS:
            continue
        test_part = de.unseen(train_part, test_part)
        started = time.perf_counter()
        results[title] = evaluate_split(
            train_part, test_part, params.bits, params.c, args.bootstrap
        )
        results[title]["n"] = {  # type: ignore[index]
            "spam": int(sum(m.spam for m in test_part)),
            "ham": int(sum(not m.spam for m in test_part)),
        }
        print(f"{title} ({time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)
        for form, figs in results[title].items():  # type: ignore[union-attr]
            print(f"  {form:24s} {json.dumps(figs)}", file=sys.stderr, flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"{args.name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.output / f"{args.name}.md").write_text(markdown(results, args.name))
    print(markdown(results, args.name))
    return 0


def markdown(results: dict[str, object], name: str) -> str:
    splits = list(results)
    forms = [f for f in results[splits[0]] if f != "n"]  # type: ignore[union-attr]
    lines = [
        f"# Ranking by model form: {name}",
        "",
        "AUC / recall at 0.1% FPR / recall at 0.5% FPR, per two-class split.",
        "",
        "| form | "
        + " | ".join(
            f"{s} ({results[s]['n']['ham']} ham / {results[s]['n']['spam']} spam)"  # type: ignore[index]
            for s in splits
        )
        + " |",
        "|---" * (len(splits) + 1) + "|",
    ]
    for form in forms:
        cells = []
        for s in splits:
            f = results[s][form]  # type: ignore[index]
            cells.append(
                f"{f['auc']:.4f} / {100 * f['recall@fp0.1%']:.1f}% / "
                f"{100 * f['recall@fp0.5%']:.1f}%"
            )
        lines.append(f"| {form} | " + " | ".join(cells) + " |")
    if "d_auc_lo" in results[splits[0]].get("lr+nb-a1", {}):  # type: ignore[union-attr]
        lines += [
            "",
            "Against lr, 95% paired bootstrap intervals: delta AUC / delta recall at 0.5% FPR "
            "(points).",
            "",
            "| form | " + " | ".join(splits) + " |",
            "|---" * (len(splits) + 1) + "|",
        ]
        for form in forms:
            if form == "lr":
                continue
            cells = []
            for s in splits:
                f = results[s][form]  # type: ignore[index]
                cells.append(
                    f"[{f['d_auc_lo']:+.4f}, {f['d_auc_hi']:+.4f}] / "
                    f"[{100 * f['d_recall@fp0.5%_lo']:+.1f}, {100 * f['d_recall@fp0.5%_hi']:+.1f}]"
                )
            lines.append(f"| {form} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
