"""Feedback reaches every scanner replica within seconds: two scanner processes, a release of
spam through the API (ham feedback), one replica learns it and the feedback.learned fanout
brings the new weights to the other at once, long before its poll would have."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.scanner.checks import GTUBE
from tests.conftest import running_gateway
from tests.harness import ROOT, Gateway, Sink, wait_for

POLL = 600  # the classifier's own poll: far beyond the test, so only the broadcast can explain it


@pytest.fixture
def gateway(tmp_path: Path, relay_sink: Sink, internet_sink: Sink) -> Iterator[Gateway]:
    with running_gateway(
        "sqlite",
        tmp_path,
        relay_sink,
        internet_sink,
        scanner={"classifier": {"poll_interval": POLL, "feedback_interval": 0.5}},
        retention={"delivered_copy": 600},  # the released copy stays to be learned
    ) as gw:
        yield gw


def generations(log: str) -> set[int]:
    return {int(n) for n in re.findall(r"classifier at feedback generation (\d+)", log)}


def test_a_release_is_learned_by_both_scanner_replicas(
    gateway: Gateway, relay_sink: Sink, token: str
) -> None:
    second_log = gateway.workdir / "scanner2.log"
    with open(second_log, "ab") as log:
        second = subprocess.Popen(
            [sys.executable, "-m", "services.scanner"],
            cwd=ROOT,
            env=gateway.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        logs = {"scanner": lambda: gateway.log("scanner"), "scanner2": second_log.read_text}
        for name, read in logs.items():
            wait_for(lambda r=read: "fanout feedback.learned: connected" in r(), 30, name)  # type: ignore[misc]
        bob = f"bob-{token}@example.test"
        held = gateway.send("alice@outside.test", [bob], f"{token} {GTUBE.decode()}")
        gateway.wait_status(held, "quarantined")
        assert not any(generations(read()) for read in logs.values())

        released_at = time.monotonic()
        with gateway.http() as http:
            released = http.post(f"/v1/messages/{held}/release")
        assert released.status_code == 202, released.text
        wait_for(
            lambda: all(1 in generations(read()) for read in logs.values()),
            15,
            "both replicas at generation 1",
        )
        elapsed = time.monotonic() - released_at
        print(f"release learned by both replicas in {elapsed:.2f}s")
        # Learned once, by one replica, and told to both.
        learned = [name for name, read in logs.items() if f"{held} as ham: learned" in read()]
        assert len(learned) == 1, learned
        assert elapsed < 10, elapsed
    finally:
        second.terminate()
        try:
            second.wait(20)
        except subprocess.TimeoutExpired:
            second.kill()
            second.wait(10)
