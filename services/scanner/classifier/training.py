"""Training the shipped model: ``make train`` (``python -m services.scanner.classifier.training``).

Deterministic: the held-out part is chosen by a hash of each file's name (one in five), and
the loss is convex, minimised from zero. Training never sees the held-out part; the figures
printed at the end are measured on it, and k-fold cross-validation figures on the training part
come first, then figures for the later collections by a model trained on the early ones only.
Rare features (seen in fewer than ``min_df`` training messages) are left at zero and not
shipped, and so are weights too small to matter: the model stays small.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from services.scanner.checks.base import parse
from services.scanner.classifier.model import DEFAULT_BITS, SHIPPED_MODEL, Features, Model, scale
from services.scanner.classifier.tokenizer import tokens

# The shared corpus beside the checkout (see the Makefile's CORPUS).
DEFAULT_CORPUS = Path(__file__).resolve().parents[4] / "shared" / "corpus" / "spamassassin"
# The SpamAssassin corpus's collections by period (file-name prefixes): the early ones
# (2002) and the later ones (2003 for ham, to 2005 for spam), for the "other years" figures.
EARLY = ("easy_ham.", "hard_ham.", "spam.")
LATER = ("easy_ham_2.", "spam_2.")


@dataclass(frozen=True)
class Example:
    name: str
    spam: bool
    features: Features
    when: float  # the Date header as a timestamp, 0 when absent or unreadable


@dataclass(frozen=True)
class Params:
    """Batch training: the L2-regularised logistic loss, minimised by L-BFGS."""

    c: float = 1000.0  # inverse regularisation strength (weak: the corpus is clean enough)
    ham_weight: float = 1.0  # a ham's loss counts this many times a spam's
    min_df: int = 2
    max_iterations: int = 1000
    prune_below: float = 0.002
    bits: int = DEFAULT_BITS


def message_date(raw: bytes) -> float:
    header_end = raw.find(b"\n\n")
    head = raw[: header_end if header_end >= 0 else 65536]
    for line in head.split(b"\n"):
        if line[:5].lower() == b"date:":
            try:
                return parsedate_to_datetime(line[5:].decode("latin-1").strip()).timestamp()
            except Exception:
                return 0.0
    return 0.0


def featurize(raw: bytes, bits: int = DEFAULT_BITS, name: str = "file") -> Features:
    from services.scanner.classifier.model import hash_tokens

    return hash_tokens(tokens(parse(name[-26:] or "file", raw)), bits)


def load_labelled(
    files: Sequence[tuple[Path, bool]], bits: int = DEFAULT_BITS, quiet: bool = False
) -> list[Example]:
    examples = []
    started = time.perf_counter()
    for count, (path, spam) in enumerate(files, 1):
        raw = path.read_bytes()
        examples.append(Example(path.name, spam, featurize(raw, bits), message_date(raw)))
        if not quiet and count % 1000 == 0:
            print(f"  tokenised {count}/{len(files)}", file=sys.stderr, flush=True)
    if not quiet:
        elapsed = time.perf_counter() - started
        print(
            f"  tokenised {len(files)} messages in {elapsed:.1f}s "
            f"({1000 * elapsed / max(1, len(files)):.2f} ms each, parse included)",
            file=sys.stderr,
        )
    return examples


def corpus_files(corpus: Path) -> list[tuple[Path, bool]]:
    files = [(path, False) for path in sorted((corpus / "ham").iterdir()) if path.is_file()]
    files += [(path, True) for path in sorted((corpus / "spam").iterdir()) if path.is_file()]
    return files


def held_out(name: str, parts: int = 5) -> bool:
    """One file in ``parts``, chosen by its name: stable whatever the order or the machine."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % parts == 0


def fold_of(name: str, folds: int) -> int:
    return int(hashlib.sha256(("fold:" + name).encode()).hexdigest()[:8], 16) % folds


def train(examples: Sequence[Example], params: Params | None = None) -> Model:
    """The weights and intercept minimising the L2-regularised logistic loss over the training
    messages, each message's features normalised to unit length (as the model scores them);
    features seen in fewer than ``min_df`` messages stay at zero. L-BFGS from zero on a convex
    loss: the same messages always give the same model, whatever their order."""
    from scipy.optimize import minimize  # type: ignore[import-untyped]  # training only
    from scipy.sparse import csr_matrix  # type: ignore[import-untyped]

    params = params or Params()
    size = 1 << params.bits
    df = np.zeros(size, dtype=np.int32)
    for example in examples:
        df[example.features] += 1
    columns = np.flatnonzero(df >= params.min_df)
    column_of = np.full(size, -1, dtype=np.int64)
    column_of[columns] = np.arange(len(columns))
    rows, cols, values = [], [], []
    for row, example in enumerate(examples):
        kept = column_of[example.features]
        kept = kept[kept >= 0]
        rows.append(np.full(len(kept), row))
        cols.append(kept)
        values.append(np.full(len(kept), scale(example.features)))
    matrix = csr_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(examples), len(columns)),
    )
    sign = np.array([1.0 if example.spam else -1.0 for example in examples])
    weight = np.where(sign > 0, 1.0, params.ham_weight)
    count = len(columns)

    def loss(vector: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
        weights, intercept = vector[:count], vector[count]
        margins = sign * (matrix @ weights + intercept)
        value = float((weight * np.logaddexp(0.0, -margins)).sum())
        value += 0.5 * float(weights @ weights) / params.c
        slope = -sign * weight * np.exp(-np.logaddexp(0.0, margins))  # -y * sigmoid(-m)
        gradient = np.concatenate([matrix.T @ slope + weights / params.c, [slope.sum()]])
        return value, gradient

    result = minimize(
        loss,
        np.zeros(count + 1),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": params.max_iterations},
    )
    weights = np.zeros(size, dtype=np.float32)
    weights[columns] = result.x[:count]
    spam = int((sign > 0).sum())
    model = Model(weights, params.bits, float(result.x[count]))
    model.meta = {
        "trained_on": len(examples),
        "spam": spam,
        "ham": len(examples) - spam,
        "c": params.c,
        "ham_weight": params.ham_weight,
        "min_df": params.min_df,
        "features": count,
        "iterations": int(result.nit),
    }
    return model


@dataclass(frozen=True)
class Figures:
    spam: int
    ham: int
    true_positives: int
    false_positives: int
    threshold: float
    auc: float

    @property
    def recall(self) -> float:
        return self.true_positives / self.spam if self.spam else 0.0

    @property
    def fpr(self) -> float:
        return self.false_positives / self.ham if self.ham else 0.0

    @property
    def precision(self) -> float:
        flagged = self.true_positives + self.false_positives
        return self.true_positives / flagged if flagged else 1.0

    def line(self) -> str:
        return (
            f"p>={self.threshold:g}: precision {100 * self.precision:.2f}%  "
            f"recall {100 * self.recall:.2f}%  FPR {100 * self.fpr:.2f}%  "
            f"(spam {self.spam}, ham {self.ham}, FP {self.false_positives}, "
            f"FN {self.spam - self.true_positives})  AUC {self.auc:.5f}"
        )


def figures(
    probabilities: npt.NDArray[np.float64], labels: npt.NDArray[np.bool_], threshold: float
) -> Figures:
    flagged = probabilities >= threshold
    return Figures(
        spam=int(labels.sum()),
        ham=int((~labels).sum()),
        true_positives=int((flagged & labels).sum()),
        false_positives=int((flagged & ~labels).sum()),
        threshold=threshold,
        auc=auc(probabilities, labels),
    )


def auc(scores: npt.NDArray[np.float64], labels: npt.NDArray[np.bool_]) -> float:
    """Area under the ROC curve (ties count half)."""
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def recall_at_fpr(
    probabilities: npt.NDArray[np.float64], labels: npt.NDArray[np.bool_], fpr: float
) -> tuple[float, float]:
    """The best recall with at most ``fpr`` of ham flagged, and the threshold giving it."""
    ham = np.sort(probabilities[~labels])[::-1]
    allowed = int(np.floor(fpr * len(ham)))
    threshold = float(np.nextafter(ham[allowed], 2.0)) if allowed < len(ham) else 0.0
    return float((probabilities[labels] >= threshold).mean()), threshold


def predict(model: Model, examples: Sequence[Example]) -> npt.NDArray[np.float64]:
    return np.array([model.probability(example.features) for example in examples])


def report(
    title: str, model: Model, examples: Sequence[Example], thresholds: Sequence[float]
) -> None:
    probabilities = predict(model, examples)
    labels = np.array([example.spam for example in examples])
    print(title)
    for threshold in thresholds:
        print("  " + figures(probabilities, labels, threshold).line())
    if labels.any() and (~labels).any():
        for target in (0.001, 0.005):
            recall, threshold = recall_at_fpr(probabilities, labels, target)
            print(
                f"  best recall at FPR <= {100 * target:.1f}%: {100 * recall:.2f}% "
                f"(threshold {threshold:.4f})"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.scanner.classifier.training")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="with ham/ and spam/")
    parser.add_argument("--output", type=Path, default=SHIPPED_MODEL)
    parser.add_argument("--folds", type=int, default=5, help="k-fold cross-validation; 0: none")
    parser.add_argument("--c", type=float, default=Params.c, help="inverse regularisation")
    parser.add_argument("--ham-weight", type=float, default=Params.ham_weight)
    parser.add_argument("--thresholds", default="0.5,0.9", help="probabilities to report at")
    args = parser.parse_args(argv)
    params = Params(c=args.c, ham_weight=args.ham_weight)
    thresholds = [float(value) for value in args.thresholds.split(",")]

    print(f"corpus {args.corpus}", file=sys.stderr)
    examples = load_labelled(corpus_files(args.corpus), params.bits)
    training = [example for example in examples if not held_out(example.name)]
    testing = [example for example in examples if held_out(example.name)]
    print(f"training part {len(training)}, held-out part {len(testing)} (never trained on)")

    if args.folds > 1:
        probabilities = np.zeros(len(training))
        for fold in range(args.folds):
            inside = [e for e in training if fold_of(e.name, args.folds) != fold]
            model = train(inside, params)
            for index, example in enumerate(training):
                if fold_of(example.name, args.folds) == fold:
                    probabilities[index] = model.probability(example.features)
        labels = np.array([example.spam for example in training])
        print(f"{args.folds}-fold cross-validation on the training part")
        for threshold in thresholds:
            print("  " + figures(probabilities, labels, threshold).line())

    started = time.perf_counter()
    model = train(training, params)
    print(f"trained in {time.perf_counter() - started:.1f}s")
    report("held-out part", model, testing, thresholds)
    later = [example for example in examples if example.name.startswith(LATER)]
    early = [example for example in examples if example.name.startswith(EARLY)]
    if later and early:
        report(
            f"later collections ({len(later)}), by a model trained on the early ones only "
            f"({len(early)})",
            train(early, params),
            later,
            thresholds,
        )
    kept = model.save(args.output, params.prune_below)
    shipped = Model.load(args.output)
    report("held-out part, the model as saved (pruned, float16)", shipped, testing, thresholds)
    print(f"wrote {args.output}: {kept} weights, {args.output.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
