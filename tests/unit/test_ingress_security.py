"""The rules behind TLS, submission and relay control, one by one (the listeners themselves:
tests/e2e/test_ingress_tls.py)."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from moat.counters import MemoryStore
from moat.passwords import hash_password, verify_password
from moat.settings import Settings
from moat.tls import ensure_self_signed, server_context
from services.ingress.security import may_relay, must_use_tls, protocol_name, submitted_by
from services.ingress.submission import Credentials, FailedLogins
from tests.harness import ROOT


def _settings(**overrides: Any) -> Settings:
    return Settings(
        domains={
            "example.test": {
                "relay": "127.0.0.1:25",
                "require_tls": {
                    "senders": ["Partner.test", "boss@corp.test"],
                    "networks": ["192.0.2.0/24"],
                },
            },
            "open.test": {"relay": "127.0.0.1:25"},
        },
        **overrides,
    )


def test_passwords_verify_only_the_right_one() -> None:
    hashed = hash_password("s3cret enough")
    assert hashed.startswith("$argon2id$")
    assert verify_password(hashed, "s3cret enough")
    assert verify_password(hashed, b"s3cret enough")
    assert not verify_password(hashed, "s3cret enougH")
    assert not verify_password(None, "s3cret enough")  # unknown user: the decoy never matches
    assert not verify_password("not a hash", "s3cret enough")
    with pytest.raises(ValueError):
        hash_password("")


def test_credentials_prefer_the_settings_then_the_database() -> None:
    class Store:
        async def password_hash(self, name: str) -> str | None:
            return {"dave": hash_password("from the db"), "carol": hash_password("db")}.get(name)

    settings = _settings(submission={"users": {"carol": hash_password("from settings")}})
    credentials = Credentials(settings.submission, Store())  # type: ignore[arg-type]

    async def check(name: str, password: str) -> bool:
        return await credentials.check(name, password.encode())

    assert asyncio.run(check("carol", "from settings"))
    assert not asyncio.run(check("carol", "db"))
    assert asyncio.run(check("dave", "from the db"))
    assert not asyncio.run(check("erin", "from the db"))


def test_failed_logins_count_per_client_within_the_window() -> None:
    now = [1000.0]
    failures = FailedLogins(limit=3, window=60, store=MemoryStore(clock=lambda: now[0]))

    async def scenario() -> None:
        assert not await failures.add("192.0.2.1")
        assert not await failures.add("192.0.2.1")
        assert not await failures.blocked("192.0.2.1")
        assert await failures.add("192.0.2.1")  # the third within the window
        assert await failures.blocked("192.0.2.1")
        assert not await failures.blocked("192.0.2.2")
        now[0] += 30
        assert await failures.blocked("192.0.2.1")
        now[0] += 31  # the window that began with the first failure is over
        assert not await failures.blocked("192.0.2.1")
        assert not await failures.add("192.0.2.1")  # a new window: one failure in it

    asyncio.run(scenario())


def test_failed_logins_are_one_count_for_every_replica_sharing_a_store() -> None:
    shared = MemoryStore()  # what Redis is to the replicas
    first, second = (FailedLogins(limit=3, window=60, store=shared) for _ in range(2))

    async def scenario() -> None:
        assert not await first.add("192.0.2.1")
        assert not await second.add("192.0.2.1")
        assert await first.add("192.0.2.1")
        assert await second.blocked("192.0.2.1")

    asyncio.run(scenario())


def test_require_tls_by_sender_and_network() -> None:
    settings = _settings()
    assert must_use_tls(settings, "example.test", "someone@partner.test", "198.51.100.1")
    assert must_use_tls(settings, "EXAMPLE.test", "x@mail.partner.test", "198.51.100.1")
    assert must_use_tls(settings, "example.test", "boss@corp.test", "198.51.100.1")
    assert not must_use_tls(settings, "example.test", "other@corp.test", "198.51.100.1")
    assert not must_use_tls(settings, "example.test", "x@notpartner.test", "198.51.100.1")
    assert must_use_tls(settings, "example.test", "", "192.0.2.77")  # by network
    assert not must_use_tls(settings, "example.test", "", "198.51.100.1")
    assert not must_use_tls(settings, "open.test", "someone@partner.test", "192.0.2.77")
    assert not must_use_tls(settings, "elsewhere.test", "someone@partner.test", "192.0.2.77")
    everyone = Settings(
        domains={"example.test": {"relay": "127.0.0.1:25", "require_tls": {"senders": ["*"]}}}
    )
    assert must_use_tls(everyone, "example.test", "", "198.51.100.1")


def test_relay_needs_authentication_or_a_trusted_network() -> None:
    settings = _settings(smtp={"trusted_networks": ["10.0.0.0/8"]})
    anonymous = SimpleNamespace(authenticated=None, auth_data=None)
    logged_in = SimpleNamespace(authenticated=True, auth_data="carol")
    assert not may_relay(settings, anonymous, "127.0.0.1")  # type: ignore[arg-type]
    assert may_relay(settings, anonymous, "10.1.2.3")  # type: ignore[arg-type]
    assert may_relay(settings, logged_in, "127.0.0.1")  # type: ignore[arg-type]
    assert submitted_by(logged_in) == "carol"  # type: ignore[arg-type]
    assert submitted_by(anonymous) is None  # type: ignore[arg-type]
    assert not may_relay(Settings(), anonymous, "127.0.0.1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("extended", "utf8", "tls", "authenticated", "name"),
    [
        (False, False, False, None, "SMTP"),
        (True, False, False, None, "ESMTP"),
        (True, False, True, None, "ESMTPS"),
        (True, False, True, True, "ESMTPSA"),
        (True, True, True, None, "UTF8SMTPS"),
        (True, True, True, True, "UTF8SMTPSA"),
    ],
)
def test_received_protocol_names(
    extended: bool, utf8: bool, tls: bool, authenticated: bool | None, name: str
) -> None:
    session = SimpleNamespace(extended_smtp=extended, authenticated=authenticated)
    envelope = SimpleNamespace(smtp_utf8=utf8)
    assert protocol_name(session, envelope, tls) == name  # type: ignore[arg-type]


def test_settings_refuse_what_is_no_hash_or_network() -> None:
    with pytest.raises(ValidationError, match="not an argon2 hash"):
        Settings(submission={"users": {"carol": "plaintext"}})
    with pytest.raises(ValidationError, match="CIDR"):
        Settings(
            domains={"example.test": {"relay": "127.0.0.1:25", "require_tls": {"networks": ["x"]}}}
        )
    with pytest.raises(ValidationError, match="host:port"):
        Settings(submission={"listen": "587"})
    assert Settings().submission.listen is None  # off unless configured
    assert Settings().smtp.starttls


def test_server_context_allows_tls_1_2_and_aead_suites_only(tmp_path: Path) -> None:
    cert, key = ensure_self_signed(tmp_path, "mx.test", "smtp")
    assert (tmp_path / "smtp-cert.pem").exists() and key.stat().st_mode & 0o077 == 0
    context = server_context(cert, key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    names = [c["name"] for c in context.get_ciphers()]
    assert names
    for name in names:
        assert "GCM" in name or "CHACHA20" in name, name
        assert not any(weak in name for weak in ("RC4", "DES", "CBC", "NULL", "EXP", "MD5"))
    assert ensure_self_signed(tmp_path, "mx.test", "smtp") == (cert, key)  # kept, not redone


def test_hash_password_command_prints_a_hash_that_verifies() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.ingress", "hash-password"],
        input="a long password\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    hashed = done.stdout.strip()
    assert verify_password(hashed, "a long password")
    Settings(submission={"users": {"carol": hashed}})  # accepted as it is
