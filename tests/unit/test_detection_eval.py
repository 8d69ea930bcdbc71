"""bench/detection_eval.py: it never scores a message its model trained on, its calibration
figures mean what they say, and it runs end to end on a small corpus of five sources."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.unit.test_classifier import make_mail

ROOT = Path(__file__).resolve().parents[2]


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "detection_eval", ROOT / "bench/detection_eval.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["detection_eval"] = module  # its dataclasses look themselves up by module
    spec.loader.exec_module(module)
    return module


bench = load_bench()


def mail(name: str, source: str, raw: bytes, spam: bool = False) -> object:
    return bench.Mail(
        name,
        source,
        spam,
        0.0,
        bench.group_of(source, name),
        bench.dedupe_keys(raw, False),
        frozenset(),
        len(raw),
        0.0,
    )


def test_a_message_seen_in_training_is_not_scored() -> None:
    rng = random.Random(1)
    shared = make_mail(rng, True)
    other = make_mail(rng, True)
    # the same body reached two sources, with other line endings and header lines
    crlf = shared.replace(b"\n", b"\r\n").replace(b"Subject:", b"X-Hop: 1\r\nSubject:")
    train = [mail("a", "one", shared, True)]
    test = [mail("b", "two", crlf, True), mail("c", "two", other, True)]
    assert [m.name for m in bench.unseen(train, test)] == ["c"]
    # the same Message-ID with another body is the same message too
    resent = shared.replace(b"viagra", b"VIAGRA").replace(b"casino", b"CASINO")
    if resent != shared:
        assert bench.unseen(train, [mail("d", "two", resent, True)]) == []
    # a newsletter's copy to the second address stays with the first
    first = mail("2023-01-01-shop.u1.eml", "newsletters", make_mail(rng, False))
    second = mail("2023-01-01-shop.u2.eml", "newsletters", make_mail(rng, False))
    assert bench.unseen([first], [second]) == []


def test_expected_calibration_error() -> None:
    rng = np.random.default_rng(4)
    p = rng.random(50_000)
    labels = rng.random(50_000) < p
    assert bench.ece(p, labels) < 0.01
    assert bench.ece(np.where(p > 0.5, 0.999, 0.001), labels) > 0.2


@pytest.mark.timeout(600)
def test_the_evaluation_runs_on_five_small_sources(tmp_path: Path) -> None:
    rng = random.Random(2)
    corpus = tmp_path / "corpus"
    for folder in bench.SOURCES.values():
        for label in ("ham", "spam"):
            (corpus / folder / label).mkdir(parents=True)
            for index in range(12):
                raw = make_mail(rng, label == "spam", html=index % 2 == 0, unique=f"n{index}")
                raw = raw.replace(
                    b"Message-ID:", b"Date: Mon, 1 Jan 2024 10:00:00 +0000\nMessage-ID:"
                )
                (corpus / folder / label / f"{folder}.{label}.{index}").write_bytes(raw)
    output = tmp_path / "out"
    assert (
        bench.main(["--corpus", str(corpus), "--name", "t", "--output", str(output), "--cache", ""])
        == 0
    )
    results = json.loads((output / "t.json").read_text())
    assert (output / "t-reliability.png").stat().st_size > 1000
    assert "| leave out foff |" in (output / "t.md").read_text()
    for source in bench.SOURCES:
        split = results[f"leave out {source}"]
        assert split["spam"] == split["ham"] == 12
        assert split["auc"] > 0.9  # the synthetic vocabulary carries over
        assert 0.0 <= split["ece"] <= 1.0
    assert results["online (from SpamAssassin-trained, other sources in date order)"]["messages"]
    assert results["cpu"]["parse+tokenise ms/msg (all)"] > 0
