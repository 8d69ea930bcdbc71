"""Per client IP session limits (docs/ingress-limits.md), with real clients on loopback: one
address hits a limit while another (127.0.0.2, the client socket bound to it) is still served.
Each runs with the counters in the process and in Redis (127.0.0.1:6379)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.harness import ROOT, Gateway, free_port, make_message, wait_for

pytestmark = pytest.mark.e2e

REDIS_URL = "redis://127.0.0.1:6379/0"
STORES = ["memory", "redis"]


class Client:
    """One SMTP session over a socket bound to ``source``; ``preamble`` is sent first (a
    PROXY header); ``greet`` False: the greeting is not read at once."""

    def __init__(
        self,
        port: int,
        source: str = "127.0.0.1",
        preamble: bytes = b"",
        greet: bool = True,
        timeout: float = 15,
    ) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
        )
        if preamble:
            self.sock.sendall(preamble)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply() if greet else None

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reply(self) -> tuple[int, bytes]:
        lines: list[bytes] = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError(f"connection closed after {lines!r}")
            lines.append(line[4:].rstrip(b"\r\n"))
            if line[3:4] != b"-":
                return int(line[:3]), b"\n".join(lines)

    def command(self, line: str) -> tuple[int, bytes]:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        """Whether the server closed the connection (nothing more to read)."""
        try:
            return self.file.read(1) == b""
        except (ConnectionError, TimeoutError):
            return False

    def send(self, mail_from: str, rcpt: str, body: str = "Hello.") -> tuple[int, bytes]:
        assert self.command("EHLO client.test")[0] == 250
        assert self.command(f"MAIL FROM:<{mail_from}>")[0] == 250
        code, text = self.command(f"RCPT TO:<{rcpt}>")
        if code != 250:
            return code, text
        assert self.command("DATA")[0] == 354
        message = make_message(mail_from, [rcpt], body, "limits").as_bytes()
        self.sock.sendall(message.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n"))
        self.sock.sendall(b"\r\n.\r\n")
        return self.reply()


def limits(store: str, **values: Any) -> dict[str, Any]:
    """A limits section; with Redis under a prefix of its own, so runs share nothing."""
    section: dict[str, Any] = {"greet_pause": 0, **values}
    if store == "redis":
        section["redis_url"] = REDIS_URL
        section["redis_prefix"] = f"moat-test-{uuid.uuid4().hex}:"
    return section


def ingress(make_gateway: Callable[..., Gateway], **overrides: Any) -> Gateway:
    """A gateway with only its ingress running: all these tests need (250 needs the broker,
    not a scanner)."""
    gateway = make_gateway(start=False, **overrides)
    gateway.start("ingress")
    return gateway


@pytest.fixture(scope="module", autouse=True)
def redis_running() -> None:
    subprocess.run([str(ROOT / "scripts" / "ensure-redis.sh")], check=True, capture_output=True)


@pytest.mark.parametrize("store", STORES)
def test_connections_over_the_limit_refused_per_address(
    make_gateway: Callable[..., Gateway], store: str
) -> None:
    gateway = ingress(make_gateway, limits=limits(store, connections=3))
    port = gateway.smtp_port
    held = [Client(port) for _ in range(3)]
    try:
        assert all(client.greeting and client.greeting[0] == 220 for client in held)
        with Client(port, greet=False) as fourth:
            assert fourth.reply() == (421, b"4.7.0 Too many connections from your address")
            assert fourth.closed()
        assert 'moat_ingress_limited_total{limit="connections"} 1.0' in _metrics(gateway)
        with Client(port, source="127.0.0.2") as other:  # another address: still served
            assert other.greeting is not None and other.greeting[0] == 220
            assert other.send("alice@outside.test", "bob@example.test")[0] == 250
        held.pop().close()  # a slot frees up once a session ends

        def served() -> bool:
            with Client(port, greet=False) as client:
                return client.reply()[0] == 220

        wait_for(served, 10, "a connection once one of the three closed")
    finally:
        for client in held:
            client.close()


def test_connection_count_shared_by_replicas_through_redis(
    make_gateway: Callable[..., Gateway],
) -> None:
    """Two ingress processes, one Redis: the limit holds for the client across both."""
    gateway = ingress(make_gateway, limits=limits("redis", connections=2))
    second_port = free_port()
    env = {**gateway.env, "MOAT_SMTP__LISTEN": f"127.0.0.1:{second_port}"}
    log = open(gateway.workdir / "ingress2.log", "ab")  # noqa: SIM115 - owned by the child
    replica = subprocess.Popen(
        [sys.executable, "-m", "services.ingress"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    try:
        wait_for(lambda: _listening(second_port), 30, "the second ingress")
        with Client(gateway.smtp_port), Client(second_port):
            with Client(second_port, greet=False) as third:
                assert third.reply()[0] == 421
            with Client(gateway.smtp_port, greet=False) as third:
                assert third.reply()[0] == 421
    finally:
        replica.terminate()
        replica.wait(20)
        log.close()


def test_redis_down_falls_back_to_the_process(make_gateway: Callable[..., Gateway]) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    gateway = ingress(make_gateway, limits={"greet_pause": 0, "connections": 2, "redis_url": dead})
    port = gateway.smtp_port
    with Client(port) as first, Client(port):
        assert first.send("alice@outside.test", "bob@example.test")[0] == 250
        with Client(port, greet=False) as third:  # still limited, by the process's count
            assert third.reply()[0] == 421
    # Log lines reach the file from a writer thread (moat/logs.py): wait for them, briefly.
    wait_for(lambda: "Redis unavailable" in gateway.log("ingress"), 10, "the Redis warning")
    assert gateway.log("ingress").count("Redis unavailable") == 1


@pytest.mark.parametrize("store", STORES)
def test_errors_slow_down_then_end_the_session(
    make_gateway: Callable[..., Gateway], store: str
) -> None:
    gateway = ingress(
        make_gateway,
        limits=limits(store, soft_error_limit=2, hard_error_limit=4, error_sleep=0.6),
        smtp={"trusted_networks": ["127.0.0.2/32"]},
    )
    with Client(gateway.smtp_port) as client:
        timings = []
        for _ in range(3):
            started = time.monotonic()
            code, _ = client.command("BOGUS")
            timings.append(time.monotonic() - started)
            assert code == 500
        assert timings[0] < 0.4 and timings[1] < 0.4  # within the soft limit: at once
        assert timings[2] >= 0.55  # past it: smtpd_error_sleep_time
        assert client.command("MAIL FROM:<broken")[0] == 503  # the fourth error, answered
        assert client.reply() == (421, b"4.7.0 Too many errors")
        assert client.closed()
    with Client(gateway.smtp_port, source="127.0.0.2") as trusted:  # exempt
        for _ in range(8):  # (aiosmtpd closes after 5 unknown commands: errors of another kind)
            assert trusted.command("RCPT TO:<bob@example.test>")[0] == 503
        assert trusted.command("NOOP")[0] == 250


def test_a_delivered_message_starts_the_error_count_again(
    make_gateway: Callable[..., Gateway],
) -> None:
    gateway = ingress(make_gateway, limits=limits("memory", hard_error_limit=3, soft_error_limit=0))
    with Client(gateway.smtp_port) as client:
        assert client.command("BOGUS")[0] == 500
        assert client.command("BOGUS")[0] == 500
        assert client.send("alice@outside.test", "bob@example.test")[0] == 250
        assert client.command("RSET")[0] == 250
        assert client.command("BOGUS")[0] == 500
        assert client.command("BOGUS")[0] == 500
        assert client.command("NOOP")[0] == 250  # two errors since the message: still here
    with Client(gateway.smtp_port) as client:  # recipients over max_recipients are no errors
        assert client.command("EHLO client.test")[0] == 250
        assert client.command("MAIL FROM:<alice@outside.test>")[0] == 250
        for i in range(10):
            assert client.command(f"RCPT TO:<user{i}@example.test>")[0] == 250
        for i in range(10, 15):
            assert client.command(f"RCPT TO:<user{i}@example.test>")[0] == 452
        assert client.command("NOOP")[0] == 250


@pytest.mark.parametrize("store", STORES)
def test_early_talker_refused(make_gateway: Callable[..., Gateway], store: str) -> None:
    gateway = ingress(
        make_gateway,
        limits={**limits(store), "greet_pause": 1.0},
        smtp={"trusted_networks": ["127.0.0.2/32"]},
    )
    port = gateway.smtp_port
    with Client(port, greet=False) as talker:
        talker.sock.sendall(b"EHLO spambot.test\r\n")
        assert talker.reply() == (554, b"5.5.0 Protocol error: you talked before the greeting")
        assert talker.closed()
    assert 'moat_ingress_limited_total{limit="early_talker"} 1.0' in _metrics(gateway)
    started = time.monotonic()
    with Client(port) as polite:  # waits: greeted after the pause
        assert polite.greeting is not None and polite.greeting[0] == 220
        assert time.monotonic() - started >= 0.9
    started = time.monotonic()
    with Client(port) as again:  # passed once: no pause for a while (postscreen's cache)
        assert again.greeting is not None and again.greeting[0] == 220
        assert time.monotonic() - started < 0.5
    started = time.monotonic()
    with Client(port, source="127.0.0.2") as trusted:  # exempt: no pause
        assert trusted.greeting is not None and trusted.greeting[0] == 220
        assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("store", STORES)
def test_message_and_recipient_rates(make_gateway: Callable[..., Gateway], store: str) -> None:
    gateway = ingress(
        make_gateway, limits=limits(store, messages_per_minute=2, recipients_per_minute=3)
    )
    port = gateway.smtp_port
    with Client(port) as client:
        assert client.command("EHLO client.test")[0] == 250
        for _ in range(2):
            assert client.command("MAIL FROM:<alice@outside.test>")[0] == 250
            assert client.command("RSET")[0] == 250
        code, text = client.command("MAIL FROM:<alice@outside.test>")
        assert (code, text[:6]) == (450, b"4.7.1 ")
        assert client.command("NOOP")[0] == 250  # refused, not disconnected (Postfix)
    with Client(port, source="127.0.0.2") as other:
        assert other.command("EHLO client.test")[0] == 250
        assert other.command("MAIL FROM:<alice@outside.test>")[0] == 250
        for i in range(3):
            assert other.command(f"RCPT TO:<user{i}@example.test>")[0] == 250
        code, text = other.command("RCPT TO:<user3@example.test>")
        assert (code, text[:6]) == (450, b"4.7.1 ")


def _metrics(gateway: Gateway) -> str:
    return httpx.get(gateway.probe_url("ingress") + "/metrics", timeout=10).text


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_failed_logins_counted_across_replicas_through_redis(
    make_gateway: Callable[..., Gateway],
) -> None:
    """An attacker who spreads password guesses over two ingress replicas gets no more tries
    than against one: the failed-login count is in the shared Redis."""
    import base64
    import ssl

    from moat.passwords import hash_password

    def plain(user: str, password: str) -> str:
        return base64.b64encode(f"\0{user}\0{password}".encode()).decode()

    first_port, second_port = free_port(), free_port()
    gateway = ingress(
        make_gateway,
        limits=limits("redis"),
        submission={
            "listen_tls": f"127.0.0.1:{first_port}",
            "users": {"carol": hash_password("the right one")},
            "max_auth_failures": 3,
            "auth_failure_window": 300,
            "auth_failure_delay": 0,
        },
    )
    env = {
        **gateway.env,
        "MOAT_SMTP__LISTEN": f"127.0.0.1:{free_port()}",
        "MOAT_SUBMISSION__LISTEN_TLS": f"127.0.0.1:{second_port}",
    }
    log = open(gateway.workdir / "ingress2.log", "ab")  # noqa: SIM115 - owned by the child
    replica = subprocess.Popen(
        [sys.executable, "-m", "services.ingress"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    context = ssl.create_default_context(cafile=gateway.workdir / "tls" / "smtp-cert.pem")

    def session(port: int, password: str) -> tuple[int, bytes]:
        raw = socket.create_connection(("127.0.0.1", port), timeout=15)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            file = tls.makefile("rb")
            file.readline()  # the greeting
            tls.sendall(b"EHLO client.test\r\n")
            while file.readline()[3:4] == b"-":
                pass
            tls.sendall(f"AUTH PLAIN {plain('carol', password)}\r\n".encode())
            line = file.readline()
            return int(line[:3]), line[4:].rstrip()

    try:
        wait_for(lambda: _listening(second_port), 30, "the second ingress")
        assert session(first_port, "guess 1")[0] == 535
        assert session(second_port, "guess 2")[0] == 535
        assert session(first_port, "guess 3")[0] == 421  # the third, on either replica
        code, text = session(second_port, "the right one")  # and the other one knows it
        assert (code, text[:6]) == (421, b"4.7.0 "), text
    finally:
        replica.terminate()
        replica.wait(20)
        log.close()
