"""The model: logistic regression over hashed binary token features, normalised to unit length.

Why logistic regression over hashed features (and not naive Bayes):
- It is discriminative: correlated tokens (a header and the header-order pair that contains it,
  a word in the subject and in the body) are not counted twice, so its probabilities are far
  better calibrated than naive Bayes's, which are nearly always 0 or 1.
- Online, one gradient step per message (Goodman & Yih, "Online Discriminative Spam Filter
  Training", CEAS 2006) it was among the best filters of the TREC spam tracks, and the same
  step is how feedback is learned: a learned message changes the weights of its own tokens by
  a small additive delta, which is exactly what the store keeps and every replica merges.
- Hashing (CRC-32 of the token, modulo 2**bits) keeps the model a fixed-size array: no
  vocabulary to grow, no token strings stored (nothing of anyone's mail is in the model).

- Normalised (each of a message's n features is worth 1/sqrt(n)): a long message does not
  outvote a short one by its length alone, and one learning step moves a message's logit by
  about ``rate`` whatever its size. With a separate intercept, this generalised better to the
  later years of the corpus than raw counts (docs/classifier.md).

Scoring a message is a sum over its few hundred feature weights: microseconds.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from services.scanner.classifier.calibration import Calibration

FORMAT = "moat-classifier/2"
DEFAULT_BITS = 20
SHIPPED_MODEL = Path(__file__).parent / "model" / "model.npz"

Features = npt.NDArray[np.int64]


def hash_tokens(tokens: Iterable[str], bits: int) -> Features:
    """The distinct feature indices of a token set."""
    mask = (1 << bits) - 1
    indices = {zlib.crc32(token.encode("utf-8", "surrogatepass")) & mask for token in tokens}
    return np.fromiter(indices, dtype=np.int64, count=len(indices))


def scale(features: Features) -> float:
    """Each feature's value in a message of ``len(features)`` features (unit L2 norm)."""
    return 1.0 / math.sqrt(max(1, len(features)))


def sigmoid(margin: float) -> float:
    return float(1.0 / (1.0 + np.exp(-np.clip(margin, -40.0, 40.0))))


@dataclass
class Model:
    """Weights (shipped) plus learned deltas (from the store) = the weights in force."""

    base: npt.NDArray[np.float32]
    bits: int = DEFAULT_BITS
    intercept: float = 0.0  # the logit of a message with no known feature (not learned)
    meta: dict[str, object] = field(default_factory=dict)
    # logit -> probability on unseen mail (calibration.py); None: the plain sigmoid
    calibration: Calibration | None = None
    weights: npt.NDArray[np.float32] = field(init=False)
    deltas: dict[int, float] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.weights = self.base.copy()

    @classmethod
    def empty(cls, bits: int = DEFAULT_BITS) -> Model:
        return cls(np.zeros(1 << bits, dtype=np.float32), bits)

    def features(self, tokens: Iterable[str]) -> Features:
        return hash_tokens(tokens, self.bits)

    def margin(self, features: Features, weights: npt.NDArray[np.float32] | None = None) -> float:
        """The logit of a message: of the weights in force, or of ``weights``."""
        chosen = self.weights if weights is None else weights
        total = float(chosen[features].sum(dtype=np.float64))
        return self.intercept + total * scale(features)

    def known(self, features: Features, weights: npt.NDArray[np.float32] | None = None) -> int:
        """How many of the message's features carry a weight: the model's evidence."""
        chosen = self.weights if weights is None else weights
        return int(np.count_nonzero(chosen[features]))

    def probability(
        self, features: Features, weights: npt.NDArray[np.float32] | None = None
    ) -> float:
        """The calibrated spam probability (the logit's sigmoid when there is no calibration),
        by the weights in force or by ``weights``."""
        return sigmoid(self.logit(features, weights))

    def logit(self, features: Features, weights: npt.NDArray[np.float32] | None = None) -> float:
        """The calibrated logit (the raw one when there is no calibration)."""
        margin = self.margin(features, weights)
        if self.calibration is None:
            return margin
        return self.calibration.logit(margin, self.known(features, weights))

    # --- learning ------------------------------------------------------------------------------

    def update(
        self,
        features: Features,
        spam: bool,
        rate: float,
        max_steps: int = 1,
        margin: float = 0.0,
    ) -> npt.NDArray[np.float32]:
        """Gradient steps of the logistic loss on one message, until its probability is on
        the right side of 0.5 by ``margin`` (in logit units) or ``max_steps`` were taken; at
        least one. A step moves the message's logit by ``rate`` times its error (features
        being normalised). Error and margin are those of the calibrated probability, the one
        users see: a learned message ends up where feedback asked for. Applied to the weights
        in force; returns the total delta per feature."""
        target = 1.0 if spam else 0.0
        total = np.zeros(len(features), dtype=np.float32)
        value = scale(features)
        for step in range(max(1, max_steps)):
            current = self.logit(features)
            if step and (current >= margin if spam else current <= -margin):
                break
            change = np.float32(rate * (target - sigmoid(current)) * value)
            total += change
            self.weights[features] += change
        return total

    def apply_deltas(self, deltas: dict[int, float]) -> None:
        """Set learned deltas (absolute totals per feature) over the shipped weights."""
        if not deltas:
            return
        indices = np.fromiter(deltas.keys(), dtype=np.int64, count=len(deltas))
        values = np.fromiter(deltas.values(), dtype=np.float32, count=len(deltas))
        self.weights[indices] = self.base[indices] + values
        self.deltas.update(deltas)

    # --- files ---------------------------------------------------------------------------------

    def save(self, path: Path, prune_below: float = 0.0) -> int:
        """Write the shipped weights, sparse: only those of magnitude >= ``prune_below``.
        Returns how many were kept."""
        keep = np.flatnonzero(np.abs(self.weights) >= max(prune_below, 1e-9))
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {**self.meta, "format": FORMAT, "bits": self.bits, "intercept": self.intercept}
        if self.calibration is not None:
            meta["calibration"] = self.calibration.to_meta()
        with open(path, "wb") as handle:
            np.savez_compressed(
                handle,
                indices=keep.astype(np.uint32),
                weights=self.weights[keep].astype(np.float16),
                meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8),
            )
        return len(keep)

    @classmethod
    def load(cls, path: Path) -> Model:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path}: not a {FORMAT} model")
            bits = int(meta["bits"])
            intercept = float(meta.get("intercept", 0.0))
            base = np.zeros(1 << bits, dtype=np.float32)
            base[data["indices"].astype(np.int64)] = data["weights"].astype(np.float32)
        return cls(base, bits, intercept, meta, Calibration.from_meta(meta.get("calibration")))
