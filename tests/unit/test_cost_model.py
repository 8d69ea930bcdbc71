"""The per-message cost model of bench/drain_bench.py: what it predicts and which limit it names.
A wrong limit would send an operator to add scanners where cores are missing, or the reverse."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from drain_bench import CostModel

# Shaped like a measured run: the scanner is the costliest stage.
MODEL = CostModel(ingress=2.0, scanner=4.0, delivery=1.5, rabbitmq=1.5, client=0.5, database=1.0)


def test_two_cores_are_cpu_bound_whatever_the_scanner_count() -> None:
    for scanners in (1, 2, 4):
        rate, limit = MODEL.e2e(2, scanners)
        assert limit == "CPU"
        assert rate == pytest.approx(2000 / 9.0)


def test_many_cores_one_scanner_is_limited_by_the_scanner_process() -> None:
    rate, limit = MODEL.e2e(16, 1)
    assert (rate, limit) == (pytest.approx(250.0), "scanner processes")


def test_enough_scanners_move_the_limit_to_the_single_ingress_process() -> None:
    rate, limit = MODEL.e2e(64, 8)
    assert (rate, limit) == (pytest.approx(500.0), "ingress process")


def test_the_load_generator_counts_only_when_it_shares_the_machine() -> None:
    alone, _ = MODEL.e2e(2, 1)
    shared, _ = MODEL.e2e(2, 1, with_client=True)
    assert shared == pytest.approx(2000 / 9.5) and shared < alone
    # the database runs inside the services: never added a second time
    assert MODEL.total(False) == pytest.approx(9.0)


def test_drain_is_bound_by_processes_or_by_free_cores() -> None:
    assert CostModel.drain(2.0, 1, 4.0, 1.0) == pytest.approx(250.0)  # one process, one core
    assert CostModel.drain(2.0, 2, 4.0, 1.0) == pytest.approx(400.0)  # the two cores
    assert CostModel.drain(0.5, 4, 4.0, 1.0) == pytest.approx(100.0)  # a busy machine
    assert not math.isnan(CostModel.drain(2.0, 4, 4.0, 0.0))


def test_a_database_server_of_its_own_shares_the_cores() -> None:
    apart = CostModel(
        ingress=2.0, scanner=4.0, delivery=1.5, rabbitmq=1.5, database=1.0, database_apart=True
    )
    assert apart.total(False) == pytest.approx(10.0)
    assert apart.e2e(2, 1)[0] == pytest.approx(200.0)
