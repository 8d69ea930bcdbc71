"""bench/rank_variants.py: its Naive Bayes and Robinson/Fisher scores point the right way, thin
evidence stays neutral, and every form is measured on a split it did not train on."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(name: str) -> ModuleType:
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location(name, ROOT / f"bench/{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look themselves up by module
    spec.loader.exec_module(module)
    return module


de = load("detection_eval")
rv = load("rank_variants")


def test_robinson_scores_spammy_tokens_above_hammy_and_ignores_unknown_ones() -> None:
    size = 8
    spam_df = np.array([9, 0, 5, 0, 0, 0, 0, 0], dtype=float)
    ham_df = np.array([0, 9, 5, 0, 0, 0, 0, 0], dtype=float)
    table = rv.robinson_table(spam_df, ham_df, 10, 10, 1.0)
    assert table[0] > 0.8 and table[1] < 0.2
    assert abs(table[2] - 0.5) < 1e-9 and table[3] == 0.5  # balanced, unseen: neutral
    spammy = rv.robinson_score(table, np.array([0, 3]))
    hammy = rv.robinson_score(table, np.array([1, 3]))
    assert spammy > 0 > hammy
    assert rv.robinson_score(table, np.array([2, 3, 4])) == 0.0  # no significant token
    assert len(table) == size


def test_log_count_ratio_signs_and_rare_tokens() -> None:
    spam_df = np.array([4, 0, 1, 0], dtype=float)
    ham_df = np.array([0, 4, 0, 0], dtype=float)
    r = rv.log_ratio(spam_df, ham_df, 1.0, 2)
    assert r[0] > 0 > r[1]
    assert r[2] == 0 and r[3] == 0  # seen in fewer than min_df messages: no say


def test_every_form_is_measured_on_a_held_out_split() -> None:
    rng = random.Random(7)
    mails = []
    for index in range(120):
        spam = index % 2 == 0
        source = "a" if index < 80 else "b"
        words = {f"w{rng.randrange(40)}" for _ in range(12)}
        words |= {"cheap", "offer"} if spam else {"meeting", "notes"}
        if rng.random() < 0.2:  # some noise so the ranking is not trivially perfect
            words |= {"offer"} if not spam else {"notes"}
        mails.append(
            de.Mail(
                f"m{index}",
                source,
                spam,
                0.0,
                f"{source}:{index}",
                (f"k{index}",),
                frozenset(words),
                100,
                0.0,
            )
        )
    train = [m for m in mails if m.source == "a"]
    test = [m for m in mails if m.source == "b"]
    result = rv.evaluate_split(train, test, 16, 10.0)
    assert {"lr", "nb-a1", "nblr", "robinson-sa", "lr+robinson-s0.16"} <= set(result)
    for form, figures in result.items():
        assert 0.9 <= figures["auc"] <= 1.0, form  # the class words carry over to source b


def test_the_bootstrap_interval_is_zero_for_the_same_scores_and_negative_for_reversed_ones() -> (
    None
):
    rng = np.random.default_rng(3)
    labels = rng.random(400) < 0.4
    score = labels + rng.normal(0, 0.8, 400)
    intervals = rv.bootstrap({"lr": score, "same": score.copy(), "reversed": -score}, labels, 30)
    assert intervals["same"] == {
        "d_auc_lo": 0.0,
        "d_auc_hi": 0.0,
        "d_recall@fp0.5%_lo": 0.0,
        "d_recall@fp0.5%_hi": 0.0,
    }
    assert intervals["reversed"]["d_auc_hi"] < -0.5
    assert rv.fast_auc(score, labels) == pytest.approx(rv.auc(score, labels))
