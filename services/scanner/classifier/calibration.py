"""From the model's logit to a spam probability that means what it says on unseen mail.

A logistic model trained to convergence on one corpus is over-confident on mail from elsewhere:
its logit is a sum over the tokens it knows, and on a new source it knows fewer of them and the
ones it knows mean less. Two corrections, fitted together on held-out predictions (each source
of the training corpora scored by a model trained without it, ``make train``):

- **Evidence shrinkage.** The logit is multiplied by ``n / (n + k)``, n being how many of the
  message's features have a weight (the tokens the model has seen in training or feedback). A
  message of mostly unknown tokens (a new sender, a new language, a new kind of newsletter) is
  pulled towards the prior instead of being called with the confidence its two known tokens
  would give.
- **Platt scaling** of the shrunk logit: ``a + b * shrunk``. ``b < 1`` tempers the whole scale;
  ``a`` is the log-odds with no evidence at all.

``k`` is chosen from a small grid by the held-out log loss, ``a`` and ``b`` by L-BFGS
with Platt's smoothed targets (so that a separable held-out set does not give an infinite slope).
The held-out set is weighted so that each source counts the same: the largest corpus must not
decide what "unseen" looks like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

EVIDENCE_GRID = (0.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)


@dataclass(frozen=True)
class Calibration:
    a: float = 0.0
    b: float = 1.0
    k: float = 0.0  # known features at which the logit counts half

    def logit(self, margin: float, known: float) -> float:
        shrink = known / (known + self.k) if self.k > 0 else 1.0
        return self.a + self.b * margin * shrink

    def probability(self, margin: float, known: float) -> float:
        value = max(-40.0, min(40.0, self.logit(margin, known)))
        return 1.0 / (1.0 + math.exp(-value))

    def to_meta(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "k": self.k}

    @classmethod
    def from_meta(cls, meta: object) -> Calibration | None:
        if not isinstance(meta, dict):
            return None
        return cls(float(meta["a"]), float(meta["b"]), float(meta["k"]))


def _platt(
    x: npt.NDArray[np.float64], labels: npt.NDArray[np.bool_], weights: npt.NDArray[np.float64]
) -> tuple[float, float, float]:
    """Weighted Platt scaling: (a, b, mean log loss). L-BFGS on the two parameters (a plain
    Newton step diverges from b = 1 when the logits are large and the sigmoid saturates)."""
    from scipy.optimize import minimize  # type: ignore[import-untyped]  # training only

    positives = float(weights[labels].sum())
    negatives = float(weights[~labels].sum())
    # Platt's smoothed targets, with the weighted class totals standing for the counts
    target = np.where(labels, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    total = float(weights.sum())

    def loss(vector: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
        z = vector[0] + vector[1] * x
        value = weights * (target * np.logaddexp(0, -z) + (1 - target) * np.logaddexp(0, z))
        error = weights * (np.exp(-np.logaddexp(0, -z)) - target)
        gradient = np.array([error.sum(), (error * x).sum()]) / total
        return float(value.sum()) / total, gradient

    result = minimize(loss, np.array([0.0, 0.1]), jac=True, method="L-BFGS-B")
    return float(result.x[0]), float(result.x[1]), float(result.fun)


def fit(
    margins: npt.NDArray[np.float64],
    known: npt.NDArray[np.float64],
    labels: npt.NDArray[np.bool_],
    groups: npt.NDArray[np.str_] | None = None,
) -> Calibration:
    """The calibration minimising the held-out log loss; ``groups`` (a source per message)
    weights each source equally."""
    weights: npt.NDArray[np.float64] = np.ones(len(margins))
    if groups is not None:
        names, index, counts = np.unique(groups, return_inverse=True, return_counts=True)
        weights = (len(margins) / len(names)) / counts[index]
    best: tuple[float, Calibration] | None = None
    for k in EVIDENCE_GRID:
        shrunk = margins * (known / (known + k) if k > 0 else 1.0)
        a, b, loss = _platt(shrunk, labels, weights)
        if best is None or loss < best[0] - 1e-6:
            best = (loss, Calibration(a, b, k))
    assert best is not None
    return best[1]
