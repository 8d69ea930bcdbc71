"""The image's HEALTHCHECK (python -m services.healthcheck) against real services: healthy while
a service answers, unhealthy once it is gone; and it finds the service from PID 1's command
line, as in a container."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from services.healthcheck import service_of_pid1
from tests.harness import ROOT, Gateway

pytestmark = pytest.mark.e2e


def _check(gateway: Gateway, service: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.healthcheck", service],
        cwd=ROOT,
        env=gateway.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_healthcheck_follows_the_service(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway("sqlite", start=False)
    gateway.start("ingress", "api")
    for service in ("ingress", "api"):
        result = _check(gateway, service)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"{service}: healthy" in result.stdout
    gateway.stop("ingress")
    gateway.stop("api")
    for service in ("ingress", "api"):
        result = _check(gateway, service)
        assert result.returncode == 1, result.stdout + result.stderr
    assert _check(gateway, "nonsense").returncode == 2


def test_the_service_is_read_from_pid1(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    for service in ("ingress", "scanner", "delivery", "api"):
        cmdline.write_bytes(b"python\0-m\0services." + service.encode() + b"\0")
        assert service_of_pid1(cmdline) == service
    cmdline.write_bytes(b"python\0-m\0moat.migrate\0")
    assert service_of_pid1(cmdline) is None
    assert service_of_pid1(tmp_path / "missing") is None
