"""The signing key, signed values, one-click links, digest times and webhook signatures."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from moat.db import create_engine
from moat.settings import Settings
from services.api.digests import next_run
from services.api.links import Action, LinkRefused, Links, Refusal
from services.api.signing import BadSignature, Signer, SigningKeyMissing, load_signing_key
from services.api.webhooks import signature
from tests.support.receiver import verify

KEY = b"k" * 32


def test_outside_dev_a_signing_key_is_required(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyMissing, match="MOAT_API__SIGNING_KEY"):
        load_signing_key(Settings(env="test", admin_token="t" * 20))
    configured = Settings(env="prod", admin_token="t" * 20, api={"signing_key": "s" * 40})
    assert load_signing_key(configured) == b"s" * 40
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings(api={"signing_key": "short"})


def test_in_dev_a_key_is_made_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "var" / "api-signing-key"
    settings = Settings(env="dev", api={"signing_key_file": path})
    first = load_signing_key(settings)
    assert len(first) == 64 and path.stat().st_mode & 0o777 == 0o600
    assert load_signing_key(settings) == first  # the same key after a restart
    assert [p.name for p in path.parent.iterdir()] == ["api-signing-key"]  # nothing left aside


def test_a_signed_value_is_for_one_purpose_and_cannot_be_changed() -> None:
    links, sessions = Signer(KEY, "links"), Signer(KEY, "session")
    signed = links.sign({"a": "release", "m": "01ABC"})
    assert links.verify(signed) == {"a": "release", "m": "01ABC"}
    with pytest.raises(BadSignature):
        sessions.verify(signed)  # a link is no session cookie
    with pytest.raises(BadSignature):
        Signer(b"x" * 32, "links").verify(signed)  # another key
    payload, mac = signed.split(".")
    for forged in (f"{payload[:-1]}A.{mac}", f"{payload}.{mac[:-1]}", payload, "", "a.b.c"):
        with pytest.raises(BadSignature):
            links.verify(forged)


def test_links_bind_action_message_recipient_and_expiry(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'moat.db'}")  # never connected
    links = Links(KEY, engine, "https://moat.test:8443/")
    token = links.make(Action.DELETE, "01ABC", "Bob@Example.Test", ttl=60)
    link = links.read(token)
    assert (link.action, link.message_id, link.recipient) == (
        Action.DELETE,
        "01ABC",
        "bob@example.test",
    )
    assert time.time() < link.expires <= time.time() + 60 and len(link.nonce) == 32
    assert links.url(token) == f"https://moat.test:8443/ui/link/{token}"
    assert links.make(Action.DELETE, "01ABC", "bob@example.test", 60) != token  # a new nonce
    with pytest.raises(LinkRefused) as expired:
        links.read(links.make(Action.RELEASE, "01ABC", "bob@example.test", ttl=-1))
    assert expired.value.why == Refusal.EXPIRED
    other_key = Links(b"o" * 32, engine, "https://moat.test")
    with pytest.raises(LinkRefused) as invalid:
        other_key.read(token)
    assert invalid.value.why == Refusal.INVALID


def test_digests_run_on_the_clock_not_on_restarts() -> None:
    day = 86400.0
    assert next_run(0.5 * day, day, 0) == day
    assert next_run(day, day, 0) == 2 * day  # exactly on the hour: the next one
    assert next_run(10 * day + 3600, day, 7 * 3600) == 10 * day + 7 * 3600  # 07:00 UTC
    assert next_run(10 * day + 8 * 3600, day, 7 * 3600) == 11 * day + 7 * 3600


def test_the_webhook_signature_is_what_receivers_check() -> None:
    body = b'{"id":"evt_1_quarantined","type":"quarantined"}'
    now = int(time.time())
    header = signature("whsec_secret", now, body)
    assert header.startswith(f"t={now},v1=") and len(header.split("v1=")[1]) == 64
    assert verify("whsec_secret", header, body)
    assert not verify("whsec_secret", header, body + b" ")
    assert not verify("whsec_other", header, body)
    assert not verify("whsec_secret", signature("whsec_secret", now - 3600, body), body)  # old
