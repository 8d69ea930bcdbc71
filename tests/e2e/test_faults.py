"""Faults: the broker going away during DATA, a scanner killed mid-work, a poison message.
Each test runs its own gateway, since it stops or cuts off services."""

from __future__ import annotations

import asyncio
import re
import signal
import smtplib
from collections import Counter
from collections.abc import Callable

import aio_pika
import pytest

from tests.harness import Gateway, Sink, TcpProxy, make_message, wait_for

pytestmark = pytest.mark.e2e


def test_broker_unreachable_during_data_answers_451_and_nothing_is_processed(
    make_gateway: Callable[..., Gateway], relay_sink: Sink, token: str
) -> None:
    proxy = TcpProxy(target_port=5672)
    try:
        gateway = make_gateway("sqlite", broker={"publish_timeout": 2}, start=False)
        _route_broker_through(gateway, proxy)
        gateway.start()
        before = gateway.send("alice@outside.test", ["bob@example.test"], f"before {token}")
        gateway.wait_status(before, "delivered")

        proxy.down()
        lost = make_message("alice@outside.test", ["bob@example.test"], f"lost {token}", "lost")
        with gateway.smtp() as client:
            client.ehlo("client.test")
            client.mail("alice@outside.test")
            client.rcpt("bob@example.test")
            code, text = client.data(lost.as_bytes())
        assert (code, text[:6]) == (451, b"4.3.0 ")
        assert b"Error" not in text and b"Traceback" not in text

        proxy.up()

        # The robust connection comes back by itself; the sender's retry then succeeds.
        def accepted() -> str | None:
            try:
                return gateway.send("alice@outside.test", ["bob@example.test"], f"after {token}")
            except smtplib.SMTPDataError:
                return None

        after = wait_for(accepted, 30, "ingress to accept again", interval=0.5)
        gateway.wait_status(after, "delivered")
        # The refused message is marked rejected (never republished by the sweep) and its
        # spool file is gone, as are the delivered ones' (no copy is kept once delivered).
        statuses = gateway.statuses()
        assert statuses.get("rejected") == 1
        assert "received" not in statuses and "queued" not in statuses
        assert list((gateway.workdir / "spool").rglob("*.eml")) == []
        assert relay_sink.with_token(f"lost {token}") == []
        assert len(relay_sink.with_token(token)) == 2
    finally:
        proxy.close()


def _route_broker_through(gateway: Gateway, proxy: TcpProxy) -> None:
    import yaml

    vhost = gateway.vhost
    gateway.config["broker"]["url"] = f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}"
    (gateway.workdir / "moat.yaml").write_text(yaml.safe_dump(gateway.config))


def test_scanner_killed_with_messages_in_flight_loses_and_duplicates_nothing(
    make_gateway: Callable[..., Gateway], relay_sink: Sink, token: str
) -> None:
    gateway = make_gateway("sqlite", scanner={"prefetch": 16})
    gateway.stop("scanner")
    count = 100
    with gateway.smtp() as client:
        client.ehlo("client.test")
        for i in range(count):
            message = make_message(
                "alice@outside.test", ["bob@example.test"], f"kill {token} {i}", f"kill {i}"
            )
            client.sendmail("alice@outside.test", ["bob@example.test"], message.as_bytes())
    wait_for(lambda: gateway.ready("scan") == count, 10, "all messages waiting in 'scan'")

    gateway.start("scanner")
    # Kill it while it holds messages it has not acknowledged: fewer are ready in the queue
    # than are still without a verdict.
    wait_for(
        lambda: 0 < gateway.ready("scan") < gateway.unscanned(),
        30,
        "scan messages in flight",
        interval=0.01,
    )
    gateway.stop("scanner", signal.SIGKILL)
    # The broker takes back every unacknowledged message, nothing is lost: every message
    # without a verdict is ready again (and perhaps some that got theirs but no ack).
    wait_for(
        lambda: gateway.ready("scan") >= gateway.unscanned() > 0,
        10,
        "the unacknowledged messages back in 'scan'",
    )

    gateway.start("scanner")
    wait_for(lambda: len(relay_sink.with_token(token)) >= count, 60, "every message delivered")
    wait_for(lambda: gateway.statuses() == {"delivered": count}, 30, "every message delivered")
    assert gateway.ready("scan") == gateway.ready("deliver") == 0
    numbered = re.compile(rf"kill {token} (\d+)".encode())
    bodies = Counter(numbered.findall(m.data)[0] for m in relay_sink.with_token(token))
    assert len(bodies) == count
    assert set(bodies.values()) == {1}, "some message arrived twice"


def test_poison_message_is_dead_lettered_and_the_others_go_through(
    make_gateway: Callable[..., Gateway], relay_sink: Sink, token: str
) -> None:
    gateway = make_gateway("sqlite")
    gateway.stop("scanner")
    ids = [
        gateway.send("alice@outside.test", ["bob@example.test"], f"poison {token} {i}")
        for i in range(5)
    ]
    poison = ids[2]
    [spooled] = list((gateway.workdir / "spool").rglob(f"{poison}.eml"))
    original = spooled.read_bytes()
    spooled.unlink()  # the message can never be scanned now

    gateway.start("scanner")
    for message_id in ids:
        if message_id != poison:
            gateway.wait_status(message_id, "delivered")
    record = gateway.wait_status(poison, "failed")
    assert "spool file is missing" in record["reason"]
    wait_for(lambda: gateway.ready("dead") == 1, 20, "the poison message in 'dead'")
    assert len(relay_sink.with_token(token)) == 4

    # An administrator repairs the cause and retries it; only a failed message can be.
    with gateway.http() as http:
        assert http.post(f"/v1/messages/{ids[0]}/retry").status_code == 409
        assert http.post("/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV/retry").status_code == 404
        spooled.write_bytes(original)
        retried = http.post(f"/v1/messages/{poison}/retry")
    assert retried.status_code == 202, retried.text
    record = gateway.wait_status(poison, "delivered")
    assert "retried" in [event["event"] for event in record["events"]]
    assert len(relay_sink.with_token(token)) == 5
    # 'dead' holds what is failed now: the retried message's copy is taken out by the sweep
    wait_for(lambda: gateway.ready("dead") == 0, 20, "the retried message out of 'dead'")


def test_a_message_whose_consumer_keeps_dying_shows_failed(
    make_gateway: Callable[..., Gateway], relay_sink: Sink, token: str
) -> None:
    """When every delivery of a queue message kills its consumer, the broker dead-letters it
    after x-delivery-limit deliveries; the record must not stay 'queued' forever."""
    gateway = make_gateway("sqlite", broker={"delivery_limit": 2})
    gateway.stop("scanner")
    message_id = gateway.send("alice@outside.test", ["bob@example.test"], f"doomed {token}")

    async def die_on_it_until_dead_lettered() -> None:
        # A consumer that takes the message and goes away without an answer, again and again.
        url = f"amqp://guest:guest@127.0.0.1:5672/{gateway.vhost}"
        for _ in range(10):
            connection = await aio_pika.connect(url)
            channel = await connection.channel()
            queue = await channel.declare_queue("scan", passive=True)
            taken = await queue.get(no_ack=False, fail=False)
            await connection.close()  # unacknowledged: the broker counts a failed delivery
            if taken is None:
                return
        raise AssertionError("the broker never dead-lettered the message")

    asyncio.run(die_on_it_until_dead_lettered())
    record = gateway.wait_status(message_id, "failed", timeout=20)
    assert "delivery limit" in record["reason"]
    assert gateway.ready("dead") == 1  # still there, visible

    gateway.start("scanner")
    with gateway.http() as http:
        assert http.post(f"/v1/messages/{message_id}/retry").status_code == 202
    gateway.wait_status(message_id, "delivered")
    assert len(relay_sink.with_token(token)) == 1
    wait_for(lambda: gateway.ready("dead") == 0, 20, "the retried message out of 'dead'")
