"""Settings sources and safety, the retry schedule, and the queue topology. (Delivery outcomes:
test_outcomes.py.)"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from moat.settings import DeliverySettings, Settings, split_host_port
from moat.topology import DEAD, DELIVER, SCAN, retry_queue, topology
from services.delivery.retry import jittered, lifetime_exceeded, retry_delay


def test_yaml_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "moat.yaml"
    config.write_text(
        "domains:\n  Example.TEST.:\n    relay: 127.0.0.1:2526\n"
        "smtp:\n  listen: 127.0.0.1:2600\n  max_recipients: 7\n"
    )
    monkeypatch.setenv("MOAT_CONFIG", str(config))
    monkeypatch.setenv("MOAT_SMTP__LISTEN", "0.0.0.0:25")
    settings = Settings()
    assert settings.smtp.listen == "0.0.0.0:25"  # the environment wins
    assert settings.smtp.max_recipients == 7  # the file fills in the rest
    assert settings.relay_for("EXAMPLE.test") is not None  # names normalised
    assert settings.relay_for("other.test") is None


def test_defaults_are_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOAT_CONFIG", raising=False)
    settings = Settings()
    assert settings.domains == {}  # no open relay: every RCPT refused
    assert settings.smtp.listen.startswith("127.0.0.1:")
    assert settings.api.listen.startswith("127.0.0.1:")


def test_placeholder_token_refused_outside_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOAT_CONFIG", raising=False)
    monkeypatch.delenv("MOAT_ADMIN_TOKEN", raising=False)
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(env="prod")
    assert Settings(env="prod", admin_token="a-real-secret").env == "prod"


def test_missing_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOAT_CONFIG", "/nonexistent/moat.yaml")
    with pytest.raises(FileNotFoundError):
        Settings()


def test_bad_relay_and_empty_schedule_are_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(domains={"example.test": {"relay": "no-port"}})
    with pytest.raises(ValidationError):
        DeliverySettings(retry_schedule=[])


def test_split_host_port() -> None:
    assert split_host_port("[::1]:25") == ("::1", 25)
    assert split_host_port("mx.example.test", default_port=25) == ("mx.example.test", 25)


def test_retry_schedule_doubles_then_holds() -> None:
    settings = DeliverySettings()
    assert [retry_delay(n, settings) for n in range(1, 8)] == [
        300,
        600,
        1200,
        2400,
        3600,
        3600,
        3600,
    ]


def test_jitter_only_shortens_within_bounds() -> None:
    settings = DeliverySettings(retry_jitter=0.1)
    rng = random.Random(7)
    values = [jittered(600, settings, rng) for _ in range(200)]
    assert all(540 <= v <= 600 for v in values) and len(set(values)) > 100


def test_lifetime() -> None:
    settings = DeliverySettings(max_lifetime=3600)
    received = datetime(2026, 1, 1)
    assert not lifetime_exceeded(received, received + timedelta(minutes=30), settings, 600)
    assert lifetime_exceeded(received, received + timedelta(minutes=55), settings, 600)


def test_topology_is_quorum_with_limits_and_dead_letters() -> None:
    queues = {q.name: q.arguments for q in topology([300, 600, 300], delivery_limit=5)}
    assert set(queues) == {SCAN, DELIVER, DEAD, retry_queue(300), retry_queue(600)}
    assert all(args["x-queue-type"] == "quorum" for args in queues.values())
    for work in (SCAN, DELIVER):
        assert queues[work]["x-delivery-limit"] == 5
        assert queues[work]["x-dead-letter-routing-key"] == DEAD
    assert queues[retry_queue(600)]["x-message-ttl"] == 600_000
    assert queues[retry_queue(600)]["x-dead-letter-routing-key"] == DELIVER
