"""Greylisting at RCPT (docs/ingress-limits.md): a client that retries after the delay
passes, one that retries too soon does not; then its network passes at once."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.test_ingress_limits import Client, limits
from tests.harness import Gateway, wait_for

pytestmark = pytest.mark.e2e

DELAY = 1.5


def greylisting(make_gateway: Callable[..., Gateway], store: str, **overrides: Any) -> Gateway:
    gateway = make_gateway(
        start=False,
        greylist={"enabled": True, "delay": DELAY},
        limits=limits(store),
        **overrides,
    )
    gateway.start("ingress")
    return gateway


def attempt(port: int, mail_from: str, rcpt: str, source: str = "127.0.0.1") -> int:
    with Client(port, source=source) as client:
        code, text = client.send(mail_from, rcpt)
        if code == 451:
            assert text.startswith(b"4.7.1 Greylisted"), text
        return code


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_retry_after_the_delay_passes_a_retry_too_soon_does_not(
    make_gateway: Callable[..., Gateway], store: str
) -> None:
    gateway = greylisting(
        make_gateway,
        store,
        domains={
            "example.test": {"relay": "127.0.0.1:9"},
            "other.example.test": {"relay": "127.0.0.1:9", "greylist": False},
        },
    )
    port = gateway.smtp_port
    first = time.monotonic()
    assert attempt(port, "alice@outside.test", "bob@example.test") == 451
    assert attempt(port, "alice@outside.test", "bob@example.test") == 451  # too soon
    # Retrying until it passes: none of the early retries may restart the clock.
    wait_for(
        lambda: attempt(port, "alice@outside.test", "bob@example.test") == 250,
        DELAY + 5,
        "the retry to pass",
        interval=0.3,
    )
    assert time.monotonic() - first >= DELAY
    # The client's /24 passed once: another triplet from it passes at once.
    assert attempt(port, "carol@elsewhere.test", "dave@example.test", "127.0.0.2") == 250
    # A domain with greylist: false is not greylisted (from a network that never passed).
    assert attempt(port, "erin@outside.test", "frank@other.example.test", "127.0.1.4") == 250
    assert attempt(port, "erin@outside.test", "frank@example.test", "127.0.1.4") == 451


def test_trusted_clients_and_other_networks(make_gateway: Callable[..., Gateway]) -> None:
    gateway = greylisting(make_gateway, "memory", smtp={"trusted_networks": ["127.0.0.3/32"]})
    port = gateway.smtp_port
    assert attempt(port, "alice@outside.test", "bob@example.test", "127.0.0.3") == 250
    assert attempt(port, "alice@outside.test", "bob@example.test", "127.0.0.4") == 451
