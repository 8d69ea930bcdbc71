"""``python -m services``, the supervisor, run as it is run: a subprocess on a gateway's settings.
It restarts a child that dies and leaves the others alone, stops the children in order on
SIGTERM within the bound, and says Moat is running only once SMTP answers."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import Gateway, Sink, TcpProxy, wait_for

pytestmark = pytest.mark.e2e


@dataclass
class Supervisor:
    process: subprocess.Popen[bytes]
    gateway: Gateway
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first line matching ``pattern``; fails if the supervisor exits first."""

        def found() -> re.Match[str] | None:
            match = re.search(pattern, self.log())
            assert match or self.process.poll() is None, f"supervisor exited, no {pattern!r}"
            return match

        return wait_for(found, timeout, f"{pattern!r} in the supervisor's log", interval=0.1)

    def children(self) -> dict[str, int]:
        """The pid of each live child process, by its service (from /proc, not from the log)."""
        found = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if parent_of(int(stat.parent.name)) != self.process.pid:
                    continue
                argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
            except (FileNotFoundError, ProcessLookupError):
                continue  # it ended meanwhile
            if alive(int(stat.parent.name)) and b"-m" in argv:
                module = argv[argv.index(b"-m") + 1].decode()
                found[module.removeprefix("services.")] = int(stat.parent.name)
        return found

    def wait_replaced(self, name: str, pid: int, timeout: float) -> dict[str, int]:
        """The children once ``name`` runs again as a process other than ``pid``."""

        def replaced() -> dict[str, int] | None:
            children = self.children()
            return children if children.get(name, pid) != pid else None

        return wait_for(replaced, timeout, f"a new {name} process", interval=0.1)


@contextmanager
def supervisor(
    make_gateway: Callable[..., Gateway],
    *args: str,
    before_start: Callable[[Gateway], None] | None = None,
    **overrides: Any,
) -> Iterator[Supervisor]:
    gateway = make_gateway("sqlite", start=False, **overrides)
    if before_start is not None:
        before_start(gateway)
    log_path = gateway.workdir / "supervisor.log"
    with open(log_path, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services", *args],
            cwd=gateway.workdir,
            env=gateway.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            process_group=0,  # like a shell's job: a Ctrl-C can go to its group alone
        )
    moat = Supervisor(process, gateway, log_path)
    try:
        yield moat
    except BaseException:
        print("----- supervisor log (tail) -----")
        print("\n".join(moat.log().splitlines()[-80:]))
        raise
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()  # its children get SIGTERM from the kernel (PDEATHSIG)
                process.wait(10)


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def smtp_greeting(port: int) -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            return sock.makefile("rb").readline()
    except OSError:
        return b""


def test_a_killed_child_is_restarted_the_others_go_on_and_no_mail_is_lost(
    make_gateway: Callable[..., Gateway], relay_sink: Sink, token: str
) -> None:
    with supervisor(make_gateway) as moat:
        moat.wait_log("Moat is running", 60)
        pids = moat.children()
        assert set(pids) == {"api", "delivery", "scanner", "ingress"}
        assert {parent_of(pid) for pid in pids.values()} == {moat.process.pid}
        accepted: list[int] = []  # numbers of the messages the gateway answered 250

        def send(count: int) -> None:
            for _ in range(count):
                number = len(accepted)
                moat.gateway.send(
                    "alice@outside.test", ["bob@example.test"], f"supervised {token} {number} end"
                )
                accepted.append(number)

        send(5)
        for victim in ("scanner", "ingress"):
            os.kill(pids[victim], signal.SIGKILL)
            now = moat.wait_replaced(victim, pids[victim], 10)
            # The supervisor logs the restart once Popen returns, a moment after the new
            # process shows in /proc: on a loaded machine the test can look in between.
            moat.wait_log(re.escape(f"restarted {victim} (pid {now[victim]}): restart 1\n"), 5)
            log = moat.log()
            assert f"{victim} (pid {pids[victim]}) ended by SIGKILL" in log
            assert f"restarted {victim} (pid {now[victim]}): restart 1\n" in log
            # The others went on: the same processes as before.
            assert {n: p for n, p in now.items() if n != victim} == {
                n: p for n, p in pids.items() if n != victim
            }
            assert all(alive(pid) for pid in now.values())
            pids = now
            wait_for(lambda: smtp_greeting(moat.gateway.smtp_port).startswith(b"220"), 30, "SMTP")
            send(5)

        numbered = re.compile(rf"supervised {token} (\d+) end".encode())

        def delivered() -> set[int]:
            return {int(numbered.findall(m.data)[0]) for m in relay_sink.with_token(token)}

        wait_for(lambda: delivered() == set(accepted), 60, "every accepted message at the relay")
        assert len(accepted) == 15
        assert moat.process.poll() is None


@pytest.mark.parametrize("stop", ["SIGTERM", "Ctrl-C"])
def test_a_stop_request_stops_every_child_ingress_first_and_exits_0(
    stop: str, make_gateway: Callable[..., Gateway]
) -> None:
    with supervisor(make_gateway) as moat:
        moat.wait_log("Moat is running", 60)
        pids = moat.children()
        if stop == "SIGTERM":
            moat.process.send_signal(signal.SIGTERM)
        else:  # what a terminal sends: SIGINT to the whole foreground process group
            os.killpg(moat.process.pid, signal.SIGINT)
        # Well within the bound (shutdown_timeout, 20 s by default): every service stops by
        # itself, none has to be killed.
        assert moat.process.wait(20) == 0
        log = moat.log()
        assert "did not stop in time" not in log
        stops = [
            (log.index(f"stopping {name} (pid {pid})"), log.index(f"stopped {name} (pid {pid})"))
            for name, pid in pids.items()
        ]
        # Each ended by itself: status 0, or uvicorn's SIGTERM raised again after its stop.
        for name, pid in pids.items():
            assert re.search(
                rf"stopped {name} \(pid {pid}\): (exited with status 0|ended by SIGTERM)", log
            )
        # In order, one after the other: each is stopped before the next is told to stop.
        order = sorted(pids, key=lambda name: log.index(f"stopping {name} "))
        assert order == ["ingress", "scanner", "delivery", "api"]
        stops.sort()
        assert all(stopped < next_one for (_, stopped), (next_one, _) in pairwise(stops))
        assert not any(alive(pid) for pid in pids.values())


def test_a_child_that_does_not_stop_is_killed_after_shutdown_timeout(
    make_gateway: Callable[..., Gateway],
) -> None:
    with supervisor(make_gateway, shutdown_timeout=3) as moat:
        moat.wait_log("Moat is running", 60)
        pids = moat.children()
        os.kill(pids["scanner"], signal.SIGSTOP)  # it cannot act on SIGTERM any more
        began = time.monotonic()
        moat.process.send_signal(signal.SIGTERM)
        assert moat.process.wait(30) == 0
        elapsed = time.monotonic() - began
        log = moat.log()
        assert "scanner did not stop in time; killing it" in log
        assert f"stopped scanner (pid {pids['scanner']}): ended by SIGKILL" in log
        assert re.search(r"stopped delivery \(pid \d+\): exited with status 0", log)
        assert 3 <= elapsed < 20
        assert not any(alive(pid) for pid in pids.values())


def test_moat_is_running_is_said_only_once_smtp_answers(
    make_gateway: Callable[..., Gateway],
) -> None:
    # The ingress listens only once it reaches the broker: with the broker cut off, SMTP stays
    # silent while the other services start.
    proxy = TcpProxy(target_port=5672)
    proxy.down()

    def through_proxy(gateway: Gateway) -> None:
        gateway.config["broker"]["url"] = (
            f"amqp://guest:guest@127.0.0.1:{proxy.port}/{gateway.vhost}"
        )
        (gateway.workdir / "moat.yaml").write_text(yaml.safe_dump(gateway.config))

    try:
        with supervisor(make_gateway, "--ready-timeout", "5", before_start=through_proxy) as moat:
            complaint = moat.wait_log(r"Moat is not running: no answer from ([^\n]*)", 60)
            assert f"SMTP on 127.0.0.1:{moat.gateway.smtp_port} " in complaint[1]
            assert "Moat is running" not in moat.log()
            assert smtp_greeting(moat.gateway.smtp_port) == b""

            proxy.up()
            moat.wait_log("Moat is running", 60)
            assert smtp_greeting(moat.gateway.smtp_port).startswith(b"220")
    finally:
        proxy.close()


def _accepted_by(port: int) -> float:
    """moat_ingress_messages_total{result="queued"} of the ingress process probed on ``port``."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found = re.search(r'^moat_ingress_messages_total\{result="queued"\} (\S+)$', text, re.M)
    return float(found[1]) if found else 0.0


def test_several_ingress_processes_share_the_port_and_survive_a_kill_without_loss(
    make_gateway: Callable[..., Gateway], relay_sink: Sink, token: str
) -> None:
    """``--ingress 2``: two processes on one SMTP port (SO_REUSEPORT), each taking part of the
    connections; one killed mid-stream, the other goes on taking mail, and every 250'd message
    reaches the relay."""
    with supervisor(make_gateway, "--ingress", "2") as moat:
        moat.wait_log("Moat is running", 60)
        log = moat.log()
        assert "started ingress-1 (pid" in log and "started ingress-2 (pid" in log
        first_port = moat.gateway.config["ingress"]["metrics_port"]
        second_port = int(moat.wait_log(r"started ingress-2 \(pid \d+\).*:(\d+)\n", 5)[1])
        assert second_port != first_port
        wait_for(lambda: smtp_greeting(moat.gateway.smtp_port).startswith(b"220"), 30, "SMTP")
        accepted: list[int] = []

        def send(count: int) -> None:
            for _ in range(count):
                number = len(accepted)
                for attempt in range(5):
                    try:
                        moat.gateway.send(
                            "alice@outside.test",
                            ["bob@example.test"],
                            f"shared {token} {number} end",
                        )
                        break
                    except (smtplib.SMTPServerDisconnected, ConnectionError):
                        # Connections the kernel had queued on the killed process's socket are
                        # reset with it: no 250, so the sender tries again, as an MTA would.
                        assert attempt < 4, "no 250 after five tries"
                        time.sleep(0.2)
                accepted.append(number)

        send(24)  # a new connection each: the kernel spreads them by their source ports
        counts = wait_for(
            lambda: (c := (_accepted_by(first_port), _accepted_by(second_port)))
            and sum(c) == 24
            and c,
            10,
            "both processes' counts",
        )
        assert all(count > 0 for count in counts), counts
        ingress_pid = int(moat.wait_log(r"started ingress-1 \(pid (\d+)", 5)[1])
        os.kill(ingress_pid, signal.SIGKILL)
        send(24)  # the other process answers meanwhile; the killed one comes back
        moat.wait_log(r"restarted ingress-1 \(pid \d+\): restart 1\n", 15)
        numbered = re.compile(rf"shared {token} (\d+) end".encode())

        def delivered() -> set[int]:
            return {int(numbered.findall(m.data)[0]) for m in relay_sink.with_token(token)}

        wait_for(lambda: delivered() == set(accepted), 60, "every accepted message at the relay")
        assert len(accepted) == 48
