"""Faults under load. Each test sends numbered mail the way an MTA does (retrying 4xx and
refused connections), breaks something while mail flows, and then accounts at the sink for
every message that got a 250: delivered, lost, or delivered twice.

The promise: nothing accepted is lost, nothing ends ``failed`` or bounced because of an
operational event, and nothing is delivered twice."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
import yaml

from tests.harness import ROOT, Gateway, Sink, TcpProxy, rabbitmqctl, wait_for
from tests.support.load import Load, arrived, tally

pytestmark = [pytest.mark.e2e, pytest.mark.fault]


def _account(
    gateway: Gateway,
    load: Load,
    sink: Sink,
    what: str,
    timeout: float = 90,
    *,
    killed: bool = False,
) -> None:
    """Wait for every accepted message to arrive, then check the books (printed either way).
    ``killed``: a process died without a chance to record what it had sent, so a message may
    arrive twice (SMTP is at-least-once); those are counted, not failed."""
    try:
        assert not load.refused, f"permanent refusals: {load.refused}"
        wait_for(
            lambda: set(load.accepted) <= set(arrived(load, sink)),
            timeout,
            f"every accepted message at the sink ({what})",
            interval=0.5,
        )
        wait_for(
            lambda: gateway.statuses().get("delivered", 0) >= len(load.accepted),
            30,
            "every accepted message recorded delivered",
            interval=0.5,
        )
    finally:
        result = tally(load, sink)
        statuses = gateway.statuses()
        print(f"\n{what}: {result}; statuses {statuses}; temporary {dict(load.temporary_replies)}")
    assert result.lost == []
    if not killed:
        assert result.duplicated == {}, f"delivered twice: {result.duplicated}"
    # A sender sends again only when its session was cut after the final dot; a gateway that
    # stops politely never does that.
    assert result.resent == 0, "sessions were cut after the final dot"
    # 'rejected': the sender got a 451 and sent the message again; nothing else may remain.
    assert set(statuses) <= {"delivered", "rejected"}, statuses
    assert statuses["delivered"] == len(load.accepted)
    assert gateway.ready("dead") == 0


def _rewrite_config(gateway: Gateway) -> None:
    (gateway.workdir / "moat.yaml").write_text(yaml.safe_dump(gateway.config))


def test_next_hop_refusing_connections_defers_then_delivers_everything_once(
    make_gateway: Callable[..., Gateway], token: str
) -> None:
    """The organisation's server refuses TCP connections for 25 s while 200 messages arrive:
    every one is deferred and retried, none bounces or fails, each arrives once."""
    with Sink() as sink:
        next_hop = TcpProxy(target_port=sink.port)
        try:
            gateway = make_gateway(
                "sqlite", domains={"example.test": {"relay": f"127.0.0.1:{next_hop.port}"}}
            )
            next_hop.down()
            down_at = time.monotonic()
            load = Load(gateway.smtp_port, token, count=200, sessions=4).start()
            load.join(60)
            assert len(load.accepted) == 200
            time.sleep(max(0.0, 25 - (time.monotonic() - down_at)))  # the outage itself
            assert sink.count() == 0
            deferred = gateway.statuses().get("deferred", 0)
            next_hop.up()
            _account(gateway, load, sink, f"next hop down 25 s ({deferred} deferred at its end)")
        finally:
            next_hop.close()


@pytest.mark.parametrize("service", ["scanner", "delivery"])
def test_sigterm_to_a_worker_under_load_loses_and_fails_nothing(
    make_gateway: Callable[..., Gateway], relay_sink: Sink, token: str, service: str
) -> None:
    """A worker stopped while mail flows: what it holds is finished or handed back, never
    dead-lettered, and a new one carries on."""
    gateway = make_gateway("sqlite", scanner={"prefetch": 16})
    load = Load(gateway.smtp_port, token, count=300, sessions=4).start()
    wait_for(lambda: load.done >= 60, 60, "mail flowing")
    started = time.monotonic()
    gateway.stop(service, signal.SIGTERM)
    stopped_in = time.monotonic() - started
    gateway.start(service)
    load.join(120)
    _account(gateway, load, relay_sink, f"SIGTERM {service} (stopped in {stopped_in:.1f}s)")


def test_sigkill_to_delivery_mid_attempt_hands_its_mail_on_within_a_lease(
    make_gateway: Callable[..., Gateway], token: str
) -> None:
    """Delivery killed while it holds messages in attempts to a slow next hop: their leases
    are no longer renewed and run out, and the sweep hands them to the new worker at once
    (they used to wait out a 15-minute lease)."""
    with Sink(delay=0.3) as sink:
        gateway = make_gateway(
            "sqlite",
            domains={"example.test": {"relay": sink.address}},
            delivery={"lease_seconds": 6},
        )
        load = Load(gateway.smtp_port, token, count=200, sessions=4).start()
        wait_for(lambda: sink.count() >= 30, 60, "mail flowing")
        gateway.stop("delivery", signal.SIGKILL)
        killed_at = time.monotonic()
        gateway.start("delivery")
        load.join(120)
        _account(gateway, load, sink, "SIGKILL delivery mid-attempt", timeout=60, killed=True)
        print(f"all delivered {time.monotonic() - killed_at:.1f}s after the kill")


def test_a_next_hop_slower_than_the_lease_gets_each_message_once(
    make_gateway: Callable[..., Gateway], token: str
) -> None:
    """An attempt that outlasts the lease keeps it (renewed while it runs): the sweep never
    hands a message being delivered to a second worker, so a slow server gets it once."""
    with Sink(delay=8) as sink:
        gateway = make_gateway(
            "sqlite",
            domains={"example.test": {"relay": sink.address}},
            delivery={"lease_seconds": 3, "command_timeout": 20},
        )
        load = Load(gateway.smtp_port, token, count=5, sessions=1).start()
        load.join(30)
        _account(gateway, load, sink, "next hop slower than the lease", timeout=60)


def test_sigterm_to_ingress_under_load_cuts_no_message(
    make_gateway: Callable[..., Gateway], relay_sink: Sink, token: str
) -> None:
    """Ingress stopped while senders are mid-transaction: a message being received is
    finished and answered 250, the other sessions get 421 4.3.2, and nobody has to send a
    message twice because its session was cut after the final dot."""
    gateway = make_gateway("sqlite")
    load = Load(gateway.smtp_port, token, count=300, sessions=4).start()
    wait_for(lambda: load.done >= 60, 60, "mail flowing")
    started = time.monotonic()
    gateway.stop("ingress", signal.SIGTERM)
    stopped_in = time.monotonic() - started
    gateway.start("ingress")
    load.join(120)
    _account(gateway, load, relay_sink, f"SIGTERM ingress (stopped in {stopped_in:.1f}s)")
    assert load.temporary_replies["421"] > 0  # the open sessions were told


def test_sigterm_to_the_whole_gateway_under_load_then_restart(
    make_gateway: Callable[..., Gateway], relay_sink: Sink, token: str
) -> None:
    gateway = make_gateway("sqlite", start=False)

    def run_gateway() -> subprocess.Popen[bytes]:
        log = open(gateway.workdir / "moat.log", "ab")  # noqa: SIM115 - owned by the child
        process = subprocess.Popen(
            [sys.executable, "-m", "services", "--no-migrate"],
            cwd=ROOT,
            env=gateway.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for(gateway._smtp_ready, 30, "the SMTP listener")
        return process

    process = run_gateway()
    try:
        load = Load(gateway.smtp_port, token, count=300, sessions=4).start()
        wait_for(lambda: load.done >= 80, 60, "mail flowing")
        process.send_signal(signal.SIGTERM)
        process.wait(40)
        process = run_gateway()
        load.join(120)
        _account(gateway, load, relay_sink, "SIGTERM to python -m services, then restart")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def broker_proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(target_port=5672)
    yield proxy
    proxy.close()


def test_broker_connection_lost_for_30s_under_load(
    make_gateway: Callable[..., Gateway], token: str, broker_proxy: TcpProxy
) -> None:
    """Every service loses RabbitMQ for 30 s while mail flows to a slow next hop (so that
    deliveries are in flight when the connection goes): work in hand finishes, nothing is lost
    or sent twice, and nothing waits out a lease once the broker is back."""
    with Sink(delay=0.3) as sink:
        gateway = make_gateway(
            "sqlite",
            broker={"publish_timeout": 2},
            domains={"example.test": {"relay": sink.address}},
            start=False,
        )
        gateway.config["broker"]["url"] = (
            f"amqp://guest:guest@127.0.0.1:{broker_proxy.port}/{gateway.vhost}"
        )
        _rewrite_config(gateway)
        gateway.start()
        load = Load(gateway.smtp_port, token, count=300, sessions=4, pace=0.02).start()
        wait_for(lambda: sink.count() >= 30, 60, "mail flowing")
        broker_proxy.down()
        time.sleep(30)  # the outage itself
        broker_proxy.up()
        back = time.monotonic()
        load.join(120)
        _account(gateway, load, sink, "broker connection lost 30 s", timeout=60)
        print(f"all delivered {time.monotonic() - back:.1f}s after the broker came back")


def test_broker_restart_under_load(
    make_gateway: Callable[..., Gateway], relay_sink: Sink, token: str
) -> None:
    """RabbitMQ itself stops and starts again mid-load (its queues are durable quorum queues):
    no accepted message is lost."""
    gateway = make_gateway("sqlite", broker={"publish_timeout": 2})
    load = Load(gateway.smtp_port, token, count=300, sessions=4, pace=0.02).start()
    wait_for(lambda: load.done >= 60, 60, "mail flowing")
    rabbitmqctl("stop_app")
    try:
        time.sleep(5)
    finally:
        rabbitmqctl("start_app")
    load.join(150)
    _account(gateway, load, relay_sink, "broker restart", timeout=90)
