"""The spool cleans itself: copies go when no longer needed, leftovers of interrupted writes
are swept at start, retention purges and removes what is old, and ingress refuses mail while
the spool's disk is nearly full, and takes it again once there is room."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.scanner.checks import GTUBE
from tests.harness import Gateway, Sink, wait_for

pytestmark = pytest.mark.e2e


def _spooled(gateway: Gateway) -> set[str]:
    return {path.stem for path in (gateway.workdir / "spool").rglob("*.eml")}


def test_copies_go_when_done_and_retention_purges_and_removes(
    make_gateway: Callable[..., Gateway], relay_sink: Sink, token: str
) -> None:
    gateway = make_gateway(
        "sqlite",
        retention={"interval": 1, "quarantine": 6, "records": 10, "orphan_grace": 3600},
        start=False,
    )
    # What a crashed writer left behind (a process of this host that is gone) is swept at
    # start; a message file is not.
    leftover = gateway.workdir / "spool" / "aa" / f"01LEFTOVER.tmp-{os.uname().nodename}-999999"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a message")
    gateway.start()
    wait_for(lambda: not leftover.exists(), 10, "the leftover swept at start")

    clean = gateway.send("alice@outside.test", ["bob@example.test"], f"clean {token}")
    spam = gateway.send("alice@outside.test", ["bob@example.test"], f"{token}\n{GTUBE.decode()}")
    gateway.wait_status(clean, "delivered")
    record = gateway.wait_status(spam, "quarantined")
    assert {r["status"] for r in record["recipients"]} == {"quarantined"}
    # Delivered: no copy kept. Quarantined: kept for review.
    assert clean not in _spooled(gateway)
    assert spam in _spooled(gateway)

    # After retention.quarantine the held message is purged: record kept, copy gone.
    record = gateway.wait_status(spam, "purged", timeout=30)
    assert spam not in _spooled(gateway)
    assert record["events"][-1]["event"] == "purged"
    assert {r["status"] for r in record["recipients"]} == {"purged"}
    # After retention.records finished records leave the database.
    with gateway.http() as http:
        wait_for(
            lambda: http.get(f"/v1/messages/{clean}").status_code == 404,
            30,
            "the delivered record removed",
            interval=0.5,
        )
        wait_for(
            lambda: http.get(f"/v1/messages/{spam}").status_code == 404,
            30,
            "the purged record removed",
            interval=0.5,
        )
    # Log lines reach the file from a writer thread (moat/logs.py): wait for them, briefly.
    wait_for(
        lambda: "retention: purged 1 held message(s)" in gateway.log("delivery"), 10, "the line"
    )


# --- a nearly full disk: a real small file system for the spool ------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, mounted for this test (needs root, as the test machines have)."""
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """A ballast file that leaves about ``leave`` bytes free on ``disk``."""
    ballast = disk / "ballast"
    stat = os.statvfs(disk)
    free = stat.f_bavail * stat.f_frsize
    with open(ballast, "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))
    return ballast


def test_nearly_full_spool_refuses_mail_then_takes_it_again(
    make_gateway: Callable[..., Gateway], relay_sink: Sink, small_disk: Path, token: str
) -> None:
    gateway = make_gateway(
        "sqlite",
        spool_dir=str(small_disk / "spool"),
        smtp={"max_message_size": 200_000},  # 300 kB must stay free (1.5x)
    )
    first = gateway.send("alice@outside.test", ["bob@example.test"], f"before {token}")
    gateway.wait_status(first, "delivered")

    ballast = _fill(small_disk, leave=200_000)
    with gateway.smtp() as client:
        client.ehlo("client.test")
        code, text = client.mail("alice@outside.test")
        assert (code, text) == (452, b"4.3.1 Insufficient system storage")
        # Nothing of this session is taken later either.
        code, _ = client.rcpt("bob@example.test")
        assert code == 503

    ballast.unlink()
    # A declared SIZE that would leave less than the minimum is refused at MAIL, before the
    # data is sent.
    _fill(small_disk, leave=450_000)
    with gateway.smtp() as client:
        client.ehlo("client.test")
        code, _ = client.mail("alice@outside.test", ["SIZE=100000"])
        assert code == 250
        client.rset()
        code, _ = client.mail("alice@outside.test", ["SIZE=190000"])
        assert code == 452
    (small_disk / "ballast").unlink()

    after = gateway.send("alice@outside.test", ["bob@example.test"], f"after {token}")
    gateway.wait_status(after, "delivered")
    assert len(relay_sink.with_token(token)) == 2
    assert _spooled(gateway) == set()  # and their copies are gone again
    wait_for(lambda: "spool space low" in gateway.log("ingress"), 10, "the warning")
