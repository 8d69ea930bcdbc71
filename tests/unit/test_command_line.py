"""The services' command lines: ``--help`` explains and starts nothing; the scanner's offline
commands still run. Each test runs the real ``python -m services.<name>`` as a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from services.scanner.checks.testfiles import GTUBE
from tests.conftest import SUITE_KNOBS
from tests.harness import free_port


@pytest.fixture
def broker() -> Iterator[socket.socket]:
    """A listening socket standing in for RabbitMQ; nobody accepts, so a connection attempt
    stays in its backlog for the test to find."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        yield listener


def write_config(workdir: Path, broker_port: int) -> dict[str, str]:
    """Settings whose every path is in ``workdir`` and whose broker is ``broker_port``; the
    environment of a service that reads them."""
    config = {
        "env": "dev",
        "database_url": f"sqlite+aiosqlite:///{workdir / 'moat.db'}",
        "spool_dir": str(workdir / "spool"),
        "domains": {"example.test": {"relay": f"127.0.0.1:{free_port()}"}},
        "smtp": {"listen": f"127.0.0.1:{free_port()}", "hostname": "moat.test"},
        "api": {"listen": f"127.0.0.1:{free_port()}", "self_signed_dir": str(workdir / "tls")},
        "broker": {"url": f"amqp://guest:guest@127.0.0.1:{broker_port}/"},
        # No DNS: the offline check must not reach the internet.
        "scanner": {"auth": {"enabled": False}},
    }
    (workdir / "moat.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOAT_")}
    return env | {"MOAT_CONFIG": str(workdir / "moat.yaml")}


@pytest.mark.parametrize(
    "module",
    ["services.ingress", "services.scanner", "services.delivery", "services.api", "services"],
)
def test_help_explains_the_service_and_starts_nothing(
    module: str, tmp_path: Path, broker: socket.socket
) -> None:
    env = write_config(tmp_path, broker.getsockname()[1])
    # A service that ignored --help would run until killed: the timeout fails the test.
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m {module} [-h]")
    assert "reads: " in result.stdout  # which settings it uses
    assert "MOAT_CONFIG" in result.stdout and "moat.example.yaml" in result.stdout
    with pytest.raises(BlockingIOError):
        broker.accept()  # nobody tried the broker
    # Neither a database, a spool nor a certificate was made.
    assert [path.name for path in tmp_path.iterdir()] == ["moat.yaml"]


def test_scanner_help_lists_the_offline_commands(tmp_path: Path, broker: socket.socket) -> None:
    env = write_config(tmp_path, broker.getsockname()[1])
    result = subprocess.run(
        [sys.executable, "-m", "services.scanner", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    for command in ("check", "learn", "forget"):
        assert f"\n    {command} " in result.stdout


def test_scanner_check_still_classifies_a_file(tmp_path: Path, broker: socket.socket) -> None:
    env = write_config(tmp_path, broker.getsockname()[1])
    message = tmp_path / "gtube.eml"
    message.write_bytes(
        b"From: a@outside.test\r\nTo: b@example.test\r\nSubject: test\r\n\r\n" + GTUBE + b"\r\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "services.scanner", "check", "--rcpt", "b@example.test", message],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert json.loads(line)["verdict"] == "spam"
    with pytest.raises(BlockingIOError):
        broker.accept()  # an offline command: no broker


def test_the_suite_sees_no_gateway_settings_from_the_environment() -> None:
    """conftest removed them: a moat.yaml for make run, or a MOAT_DOMAINS in the shell, must not
    change what the tests see."""
    assert [n for n in os.environ if n.startswith("MOAT_") and n not in SUITE_KNOBS] == []
