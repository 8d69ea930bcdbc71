"""Training the shipped model: ``make train`` (``python -m services.scanner.classifier.training``).

Deterministic: the held-out part is chosen by a hash of each file's name (one in five), and
the loss is convex, minimised from zero. Training never sees the held-out part.

The corpus is every *permitted* source of the shared corpus (``PERMITTED``; never
``phishing_pot``, whose licence allows testing only). Each source of the training part is left
out in turn and scored by a model trained on the others: those out-of-source predictions are
printed (the figures that say something about unseen mail) and are what the calibration is
fitted on (calibration.py), so that the shipped probabilities mean what they say on mail from
elsewhere. Rare features (seen in fewer than ``min_df`` training messages) are left at zero and
not shipped, and so are weights too small to matter: the model stays small.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from services.scanner.checks.base import parse
from services.scanner.classifier.calibration import Calibration
from services.scanner.classifier.calibration import fit as fit_calibration
from services.scanner.classifier.model import DEFAULT_BITS, SHIPPED_MODEL, Features, Model, scale
from services.scanner.classifier.tokenizer import tokens

# The shared corpus beside the checkout (see the Makefile's CORPUS).
DEFAULT_CORPUS = Path(__file__).resolve().parents[4] / "shared" / "corpus"
SPAMASSASSIN = DEFAULT_CORPUS / "spamassassin"
# The sources the shipped model may be trained on: source name -> folder (with ham/, spam/).
PERMITTED = {
    "spamassassin": "spamassassin",
    "mailing-lists": "mailing-lists",
    "foff": "foff-milter-tests",
    "newsletters": "newsletters-unspy",
    "glitchyzorua": "spam-archive-glitchyzorua",
}
# Sources whose publisher replaced every address (From, To, Message-ID...) with "[removed]".
REDACTED = frozenset({"glitchyzorua"})
# The corpora's own anonymisation: in no real mail stream, so never something to learn.
ANONYMISED = ("example.com", "baddomain", "untrack.email", "hpot2212", "removed")
REDACTED_PREFIXES = ("f:", "fn:", "rt:", "mid:", "to:")
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
    source: str = ""


@dataclass(frozen=True)
class Params:
    """Batch training: the L2-regularised logistic loss, minimised by L-BFGS."""

    c: float = 10.0  # inverse regularisation strength (bench/detection_eval.py: 10 generalised
    # across sources as well as 1000 or better, and converges three times faster)
    ham_weight: float = 1.0  # a ham's loss counts this many times a spam's
    min_df: int = 2
    balance: float = 0.0  # with sources given: see source_weights
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


def clean(found: set[str], redacted: bool = False) -> set[str]:
    """A training message's tokens without the corpora's anonymisation marks (and, for a
    redacted source, without the sender and recipient tokens its redaction made up)."""
    kept = {token for token in found if not any(mark in token.lower() for mark in ANONYMISED)}
    if redacted:
        kept = {token for token in kept if not token.startswith(REDACTED_PREFIXES)}
    return kept


def featurize(
    raw: bytes, bits: int = DEFAULT_BITS, name: str = "file", redacted: bool = False
) -> Features:
    from services.scanner.classifier.model import hash_tokens

    return hash_tokens(clean(tokens(parse(name[-26:] or "file", raw)), redacted), bits)


def load_labelled(
    files: Sequence[tuple[Path, bool] | tuple[Path, bool, str]],
    bits: int = DEFAULT_BITS,
    quiet: bool = False,
) -> list[Example]:
    examples = []
    started = time.perf_counter()
    for count, item in enumerate(files, 1):
        path, spam = item[0], item[1]
        source = str(item[-1]) if len(item) == 3 else ""
        raw = path.read_bytes()
        features = featurize(raw, bits, path.name, source in REDACTED)
        examples.append(Example(path.name, spam, features, message_date(raw), source))
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
    files = []
    for folder, spam in (("ham", False), ("spam", True)):
        if (corpus / folder).is_dir():
            files += [(p, spam) for p in sorted((corpus / folder).iterdir()) if p.is_file()]
    return files


def source_files(root: Path) -> list[tuple[Path, bool, str]]:
    """The permitted sources under ``root`` (or ``root`` itself, one source with ham/, spam/)."""
    if (root / "ham").is_dir() or (root / "spam").is_dir():
        return [(path, spam, root.name) for path, spam in corpus_files(root)]
    files = []
    for source, folder in PERMITTED.items():
        if (root / folder).is_dir():
            files += [(path, spam, source) for path, spam in corpus_files(root / folder)]
    return files


_PAIR = re.compile(r"[.-]u[12]\.eml$")


def held_out(name: str, parts: int = 5) -> bool:
    """One file in ``parts``, chosen by its name: stable whatever the order or the machine.
    The newsletter pairs (``x.u1.eml``, ``x.u2.eml``: one mail to two addresses) go together."""
    name = _PAIR.sub("", name)
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % parts == 0


def fold_of(name: str, folds: int) -> int:
    return int(hashlib.sha256(("fold:" + name).encode()).hexdigest()[:8], 16) % folds


def source_weights(sources: Sequence[str], power: float) -> npt.NDArray[np.float64]:
    """Per-message loss weights that give a source of n messages a total weight growing as
    n**(1 - power) (power 0: every message alike; 1: every source alike), mean 1."""
    names, index, counts = np.unique(np.asarray(sources), return_inverse=True, return_counts=True)
    weights: npt.NDArray[np.float64] = counts[index].astype(np.float64) ** -power
    return weights * (len(weights) / float(weights.sum()))


def train(
    examples: Sequence[Example],
    params: Params | None = None,
    sources: Sequence[str] | None = None,
) -> Model:
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
    if sources is not None and params.balance:
        weight = weight * source_weights(sources, params.balance)
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


def out_of_source(
    examples: Sequence[Example], params: Params
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], list[Example]]:
    """Each source scored by a model trained on the others: (logits, known features, examples
    in that order). Sources are left out in turn; a corpus of one source gives nothing."""
    margins: list[float] = []
    known: list[float] = []
    scored: list[Example] = []
    for source in sorted({example.source for example in examples}):
        inside = [example for example in examples if example.source != source]
        outside = [example for example in examples if example.source == source]
        if not inside:
            continue
        model = train(inside, params, [example.source for example in inside])
        for example in outside:
            margins.append(model.margin(example.features))
            known.append(model.known(example.features))
            scored.append(example)
    return np.array(margins), np.array(known, dtype=np.float64), scored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.scanner.classifier.training")
    parser.add_argument(
        "--corpus",
        type=Path,
        default=DEFAULT_CORPUS,
        help="the shared corpus (its permitted sources), or one folder with ham/ and spam/",
    )
    parser.add_argument("--output", type=Path, default=SHIPPED_MODEL)
    parser.add_argument("--c", type=float, default=Params.c, help="inverse regularisation")
    parser.add_argument("--ham-weight", type=float, default=Params.ham_weight)
    parser.add_argument("--balance", type=float, default=Params.balance, help="source_weights")
    parser.add_argument("--thresholds", default="0.5,0.9", help="probabilities to report at")
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="ship the out-of-source calibration (off: measured across sources, it did not "
        "improve on the regularised model's own probabilities; docs/classifier.md)",
    )
    args = parser.parse_args(argv)
    params = Params(c=args.c, ham_weight=args.ham_weight, balance=args.balance)
    thresholds = [float(value) for value in args.thresholds.split(",")]

    print(f"corpus {args.corpus}", file=sys.stderr)
    examples = load_labelled(source_files(args.corpus), params.bits)
    training = [example for example in examples if not held_out(example.name)]
    testing = [example for example in examples if held_out(example.name)]
    print(f"training part {len(training)}, held-out part {len(testing)} (never trained on)")

    margins, known, scored = out_of_source(training, params)
    calibration: Calibration | None = None
    if len(scored) and args.calibrate:
        labels = np.array([example.spam for example in scored])
        groups = np.array([example.source for example in scored])
        calibration = fit_calibration(margins, known, labels, groups)
        print(f"calibration, fitted on each source scored by a model without it: {calibration}")
    if len(scored):
        labels = np.array([example.spam for example in scored])
        groups = np.array([example.source for example in scored])
        calibrated = np.array(
            [
                calibration.probability(m, k) if calibration else 1 / (1 + np.exp(-m))
                for m, k in zip(margins, known, strict=True)
            ]
        )
        print("each source of the training part, scored by a model trained on the others")
        for source in sorted(set(groups)):
            chosen = groups == source
            for threshold in thresholds:
                line = figures(calibrated[chosen], labels[chosen], threshold).line()
                print(f"  {source}: {line}")

    started = time.perf_counter()
    model = train(training, params, [example.source for example in training])
    model.calibration = calibration
    print(f"trained in {time.perf_counter() - started:.1f}s")
    report("held-out part (sources seen in training)", model, testing, thresholds)
    kept = model.save(args.output, params.prune_below)
    shipped = Model.load(args.output)
    report("held-out part, the model as saved (pruned, float16)", shipped, testing, thresholds)
    print(f"wrote {args.output}: {kept} weights, {args.output.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
