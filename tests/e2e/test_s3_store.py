"""The gateway with its message store in S3-compatible object storage (a real S3 server on
loopback, moto in server mode): mail goes through and is delivered, quarantined mail's raw copy
downloads through the API, deleted and purged mail's objects go, and a store that fails means
451, never a 250 for what was not stored."""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.scanner.checks import GTUBE
from tests.harness import Gateway, Sink, make_message, wait_for
from tests.support.s3 import S3Server

pytestmark = pytest.mark.e2e


def _ids(s3: S3Server, bucket: str) -> set[str]:
    return {key.rpartition("/")[2].removesuffix(".eml") for key in s3.keys(bucket)}


def test_mail_through_a_gateway_on_s3(
    make_gateway: Callable[..., Gateway], s3_server: S3Server, relay_sink: Sink, token: str
) -> None:
    bucket = s3_server.new_bucket()
    # Quarantine kept 12 s: long enough to look at the held copy, short enough to see it purged.
    gateway = make_gateway(
        "sqlite",
        store=s3_server.settings(bucket),
        retention={"interval": 1, "quarantine": 12},
    )

    clean = gateway.send("alice@outside.test", ["bob@example.test"], f"clean {token}")
    gateway.wait_status(clean, "delivered")
    assert len(relay_sink.with_token(token)) == 1
    # Delivered: its object goes (retention.delivered_copy is 0).
    wait_for(lambda: clean not in _ids(s3_server, bucket), 20, "the delivered copy to go")

    held = gateway.send("alice@outside.test", ["bob@example.test"], f"{token}\n{GTUBE.decode()}")
    # Durable before the 250: the object is in the bucket the moment the sender has the reply.
    assert held in _ids(s3_server, bucket)
    deleted = gateway.send("alice@outside.test", ["carol@example.test"], GTUBE.decode())
    gateway.wait_status(held, "quarantined")
    gateway.wait_status(deleted, "quarantined")
    stored = s3_server.keys(bucket)
    key = f"spool/{held[-2:].lower()}/{held}.eml"
    assert key in stored and token.encode() in stored[key]
    with gateway.http() as http:
        raw = http.get(f"/v1/messages/{held}/raw")
        assert raw.status_code == 200, raw.text
        assert raw.content == stored[key]
        assert raw.headers["content-length"] == str(len(stored[key]))
        preview = http.get(f"/v1/messages/{held}/preview")
        assert preview.status_code == 200 and token in preview.text
        assert http.delete(f"/v1/messages/{deleted}").status_code == 200
        assert deleted not in _ids(s3_server, bucket)
        assert http.get(f"/v1/messages/{deleted}/raw").status_code == 410

    # Retention purges the held message: record 'purged', object gone.
    gateway.wait_status(held, "purged", timeout=40)
    assert held not in _ids(s3_server, bucket)
    # Nothing ever went to the local spool directory.
    spool = Path(gateway.config["spool_dir"])
    assert not spool.exists() or not any(p.is_file() for p in spool.rglob("*"))


def test_a_failing_store_means_451(
    make_gateway: Callable[..., Gateway], s3_server: S3Server, relay_sink: Sink, token: str
) -> None:
    # A bucket that does not exist: every PUT is refused, as when the store is down.
    settings: dict[str, Any] = s3_server.settings("moat-no-such-bucket", max_attempts=1)
    gateway = make_gateway("sqlite", store=settings, start=False)
    gateway.start("ingress")
    message = make_message("alice@outside.test", ["bob@example.test"], token, "s3 down")
    with gateway.smtp() as client:
        client.ehlo("client.test")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("alice@outside.test", ["bob@example.test"], message.as_bytes())
    assert refused.value.smtp_code == 451
    assert b"4.3.0" in refused.value.smtp_error
    # Log lines reach the file from a writer thread (moat/logs.py): wait for them, briefly.
    wait_for(lambda: "s3://moat-no-such-bucket" in gateway.log("ingress"), 10, "the error line")
    assert "ERROR" in gateway.log("ingress") and "s3://moat-no-such-bucket" in gateway.log(
        "ingress"
    )
