"""The supervisor's restart schedule (services/__main__.py, ``Child``), on a real process that
dies at once, with the clock passed in: 1 s doubling to 30 s, reset after a healthy minute."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from services.__main__ import BACKOFF_MAX, HEALTHY_AFTER, Child


def crasher() -> Child:
    return Child("crasher", "scanner", [sys.executable, "-c", "raise SystemExit(3)"])


def die_and_restart(child: Child, now: float) -> float:
    """Let it die, let the supervisor notice at ``now``; the delay it chose, once restarted."""
    assert child.process is not None
    child.process.wait(30)
    child.tend(now)
    assert child.restart_at is not None, "the death went unnoticed"
    delay = child.restart_at - now
    child.tend(child.restart_at - 0.01)
    assert child.restart_at is not None, "restarted before its backoff was over"
    child.tend(child.restart_at)
    assert child.restart_at is None, "not restarted once its backoff was over"
    return delay


def test_a_child_that_keeps_dying_waits_longer_each_time_up_to_the_maximum(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="moat")
    child, now = crasher(), 1000.0
    child.start(now)
    delays = []
    for _ in range(7):
        delays.append(die_and_restart(child, now))
        now = child.started
    assert delays == [1, 2, 4, 8, 16, BACKOFF_MAX, BACKOFF_MAX]
    assert child.restarts == 7
    messages = [record.getMessage() for record in caplog.records]
    assert any("crasher (pid" in m and "exited with status 3 after" in m for m in messages)
    assert [m.rsplit(": ", 1)[1] for m in messages if m.startswith("restarted crasher")] == [
        f"restart {n}" for n in range(1, 8)
    ]


def test_the_backoff_starts_over_once_a_child_has_run_healthily() -> None:
    child, now = crasher(), 1000.0
    child.start(now)
    for _ in range(4):
        die_and_restart(child, now)
        now = child.started
    assert child.backoff == 16
    # This time it "ran" for HEALTHY_AFTER seconds before it died: a new trouble, a short wait.
    assert die_and_restart(child, now + HEALTHY_AFTER) == 1
    assert child.backoff == 2


def test_a_child_runs_as_much_nicer_as_it_is_told_every_thread_of_it(tmp_path: Path) -> None:
    """supervisor.background_nice: set before exec, so the threads a service starts inherit it
    (niceness is per thread on Linux)."""
    script = (
        "import os, sys, threading, time\n"
        "t = threading.Thread(target=time.sleep, args=(0.2,)); t.start()\n"
        "open(sys.argv[1], 'w').write("
        "f'{os.getpriority(os.PRIO_PROCESS, 0)} {os.getpriority(os.PRIO_PROCESS, t.native_id)}')\n"
        "t.join()\n"
    )
    mine = min(19, os.getpriority(os.PRIO_PROCESS, 0))
    seen = {}
    for nice in (0, 5):
        out = tmp_path / f"nice{nice}"
        child = Child("scanner", "scanner", [sys.executable, "-c", script, str(out)], nice=nice)
        child.start(0.0)
        assert child.process is not None
        assert child.process.wait(30) == 0
        seen[nice] = tuple(int(v) for v in out.read_text().split())
    assert seen[0] == (mine, mine)
    assert seen[5] == (min(19, mine + 5), min(19, mine + 5))
    assert Child.of("delivery", nice=7).nice == 7 and Child.of("ingress").nice == 0
