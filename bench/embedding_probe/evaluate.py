"""Probe: see README.md. An L2 logistic regression on the embeddings, scored on
detection_eval's four two-class splits (same de-duplication)."""

import json
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import detection_eval as de  # noqa: E402

from services.scanner.classifier.training import auc, recall_at_fpr  # noqa: E402

TWO_CLASS = (
    "leave out spamassassin",
    "leave out mailing-lists",
    "leave out foff",
    "older -> 2022+",
)
Vector = npt.NDArray[np.float64]


def fit(x: Vector, y: Vector, c: float) -> Vector:
    d = x.shape[1]

    def loss(w: Vector) -> tuple[float, Vector]:
        z = x @ w[:d] + w[d]
        p = 1 / (1 + np.exp(-z))
        value = np.sum(np.logaddexp(0, z) - y * z) + 0.5 / c * w[:d] @ w[:d]
        g = p - y
        return float(value), np.concatenate([x.T @ g + w[:d] / c, [g.sum()]])

    start = np.zeros(d + 1)
    return minimize(loss, start, jac=True, method="L-BFGS-B", options={"maxiter": 500}).x


def main() -> None:
    work = Path("/tmp/embed")
    with open(work / "texts.jsonl") as handle:
        rows = [json.loads(line) for line in handle]
    vectors = np.load(work / "emb.npy").astype(np.float64)
    index = {(r["source"], r["name"], r["spam"]): i for i, r in enumerate(rows)}
    mails = de.load(de.DEFAULT_CORPUS, 0, Path("/tmp/moat-detection-eval"))
    out = {}
    for title, (train, test) in de.splits(mails).items():
        if title not in TWO_CLASS:
            continue
        test = de.unseen(train, test)
        x_train = vectors[[index[(m.source, m.name, m.spam)] for m in train]]
        y_train = np.array([m.spam for m in train], float)
        x_test = vectors[[index[(m.source, m.name, m.spam)] for m in test]]
        y_test = np.array([m.spam for m in test])
        figures = {}
        for c in (1.0, 10.0):
            w = fit(x_train, y_train, c)
            score = x_test @ w[:-1] + w[-1]
            figures[f"C={c:g}"] = {
                "auc": round(auc(score, y_test), 4),
                "recall@fp0.1%": round(recall_at_fpr(score, y_test, 0.001)[0], 4),
                "recall@fp0.5%": round(recall_at_fpr(score, y_test, 0.005)[0], 4),
            }
        out[title] = figures
        print(title, json.dumps(figures), flush=True)
    (work / "results.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
