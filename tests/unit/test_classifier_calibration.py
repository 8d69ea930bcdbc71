"""The classifier's calibration (calibration.py), its shipping with the model, and the
training corpus's cleaning (training.py): see docs/classifier.md."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest

from services.scanner.classifier.calibration import Calibration, fit
from services.scanner.classifier.model import SHIPPED_MODEL, Model
from services.scanner.classifier.training import (
    Example,
    Params,
    clean,
    featurize,
    held_out,
    out_of_source,
    source_files,
    source_weights,
    train,
)
from tests.unit.test_classifier import make_mail, synthetic_model


def overconfident(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits four times too large: the true log-odds are margin / 4."""
    truth = rng.normal(0.0, 2.0, count)
    labels = rng.random(count) < 1 / (1 + np.exp(-truth))
    return truth * 4.0, labels


def test_platt_scaling_tempers_an_overconfident_logit() -> None:
    rng = np.random.default_rng(1)
    margins, labels = overconfident(rng, 20_000)
    known = np.full(len(margins), 500.0)  # plenty of evidence: shrinkage is not the question
    calibration = fit(margins, known, labels)
    assert calibration.b == pytest.approx(0.25, rel=0.15)
    # what it says is what happens: of the held-out messages it calls >= 0.9, about 9 in 10+
    fresh_margins, fresh_labels = overconfident(rng, 20_000)
    p = np.array([calibration.probability(m, 500.0) for m in fresh_margins])
    for low, high in ((0.9, 1.0), (0.0, 0.1), (0.4, 0.6)):
        chosen = (p >= low) & (p < high)
        assert abs(fresh_labels[chosen].mean() - p[chosen].mean()) < 0.03


def test_thin_evidence_is_pulled_towards_the_prior() -> None:
    """Logits of messages with few known features are noise (they mean nothing); the fit
    finds a shrinkage that takes them to the prior, while it keeps the well-founded ones."""
    rng = np.random.default_rng(2)
    count = 20_000
    known = rng.choice([2.0, 400.0], count)
    truth = rng.normal(0.0, 3.0, count)
    labels = rng.random(count) < 1 / (1 + np.exp(-truth))
    # with 2 known features the logit is unrelated to the label (but as large)
    margins = np.where(known > 100, truth, rng.normal(0.0, 3.0, count))
    calibration = fit(margins, known, labels)
    assert calibration.k > 0
    prior = 1 / (1 + math.exp(-calibration.a))
    assert abs(calibration.probability(8.0, 2.0) - prior) < 0.15
    assert calibration.probability(8.0, 400.0) > 0.99
    assert calibration.probability(-8.0, 400.0) < 0.01


def test_sources_count_alike_in_the_fit() -> None:
    """A large source whose logits are right and a small one whose logits are four times too
    large: weighted by source, the slope lands between, not at the large source's."""
    rng = np.random.default_rng(3)
    big_truth = rng.normal(0.0, 2.0, 9000)
    big_labels = rng.random(9000) < 1 / (1 + np.exp(-big_truth))
    small_margins, small_labels = overconfident(rng, 1000)
    margins = np.concatenate([big_truth, small_margins])
    labels = np.concatenate([big_labels, small_labels])
    groups = np.array(["big"] * 9000 + ["small"] * 1000)
    known = np.full(len(margins), 500.0)
    plain = fit(margins, known, labels)
    balanced = fit(margins, known, labels, groups)
    assert balanced.b < plain.b - 0.1


def test_calibration_ships_with_the_model(tmp_path: Path) -> None:
    model = synthetic_model()
    model.calibration = Calibration(a=-0.5, b=0.4, k=10.0)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = Model.load(path)
    assert loaded.calibration == model.calibration
    features = model.features(["bias", "w:viagra", "w:casino", "w:unseen-token"])
    assert loaded.probability(features) == pytest.approx(model.probability(features), abs=0.01)
    # the calibrated probability is the calibration of the logit, with the known-feature count
    margin, known = model.margin(features), model.known(features)
    assert known == 3  # the unseen token carries no weight
    assert model.probability(features) == pytest.approx(
        1 / (1 + math.exp(-(-0.5 + 0.4 * margin * known / (known + 10.0))))
    )


def test_learning_raises_the_evidence_of_what_it_learned() -> None:
    model = synthetic_model()
    model.calibration = Calibration(a=0.0, b=1.0, k=20.0)
    features = model.features({f"w:novel{i}" for i in range(30)} | {"w:viagra"})
    before = model.probability(features)
    model.update(features, spam=True, rate=2.0, max_steps=8, margin=3.0)
    assert model.known(features) == len(features)
    assert model.probability(features) > max(before, 0.9)


def test_the_shipped_model_loads_with_its_calibration_if_any() -> None:
    model = Model.load(SHIPPED_MODEL)
    # make train ships one only with --calibrate (docs/classifier.md says why it is off)
    assert model.calibration == Calibration.from_meta(model.meta.get("calibration"))
    assert model.known(model.features([])) == 0


def test_anonymisation_marks_and_redacted_senders_are_not_learned() -> None:
    found = {
        "w:removed",
        "f:dom:example.com",
        "u:dom:baddomain.com",
        "w:hello",
        "f:dom:shop.test",
        "fn:john",
        "to:count:1",
        "mid:shape:a",
    }
    assert clean(found) == {"w:hello", "f:dom:shop.test", "fn:john", "to:count:1", "mid:shape:a"}
    assert clean(found, redacted=True) == {"w:hello"}


def test_newsletter_pairs_are_held_out_together() -> None:
    names = [f"2023-01-{day:02d}-shop.u1.eml" for day in range(1, 60)]
    for name in names:
        assert held_out(name) == held_out(name.replace(".u1.", ".u2."))
    assert any(held_out(name) for name in names) and not all(held_out(n) for n in names)


def test_source_weights_balance_sources() -> None:
    weights = source_weights(["a"] * 90 + ["b"] * 10, 1.0)
    assert weights.mean() == pytest.approx(1.0)
    assert weights[:90].sum() == pytest.approx(weights[90:].sum())
    assert np.allclose(source_weights(["a"] * 90 + ["b"] * 10, 0.0), 1.0)


def test_every_source_is_scored_by_a_model_that_never_saw_it(tmp_path: Path) -> None:
    rng = random.Random(8)
    for source in ("one", "two"):
        for folder in ("ham", "spam"):
            (tmp_path / source / folder).mkdir(parents=True)
            for index in range(8):
                raw = make_mail(rng, folder == "spam", unique=f"only{source}")
                (tmp_path / source / folder / f"{source}.{index}").write_bytes(raw)
    files = source_files(tmp_path / "one") + source_files(tmp_path / "two")
    assert {source for _, _, source in files} == {"one", "two"}
    examples = [
        Example(path.name, spam, featurize(path.read_bytes(), 16), 0.0, source)
        for path, spam, source in files
    ]
    params = Params(c=10.0, bits=16, min_df=1)
    margins, known, scored = out_of_source(examples, params)
    assert len(scored) == len(examples)
    # "onlyone"/"onlytwo" appear in one source each: the model scoring a source never saw its
    # word, so no scored message counts it among its known features
    for example, count in zip(scored, known, strict=True):
        other = train([e for e in examples if e.source != example.source], params)
        assert count == other.known(example.features)
    spam = np.array([example.spam for example in scored])
    assert margins[spam].min() > margins[~spam].max()  # the synthetic words carry over
