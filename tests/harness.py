"""Test harness: the real services as child processes, real SMTP peers on loopback, a fresh
RabbitMQ vhost and a fresh database per gateway. Tests wait on conditions, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import functools
import json
import os
import secrets
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any, Self, TypeVar

import aio_pika
import httpx
import yaml
from aiosmtpd.controller import Controller

from moat.db import create_engine
from moat.migrate import upgrade
from moat.repository import Repository
from tests.support.fakedns import FakeDNS

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

POSTGRES_ADMIN_URL = os.environ.get(
    "MOAT_TEST_POSTGRES_URL", "postgresql+asyncpg://moat:moat@127.0.0.1:5432/postgres"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_block(count: int) -> list[int]:
    """``count`` consecutive free ports below the kernel's ephemeral range: the supervisor
    gives extra scanners the ports after the highest probe port, which must be free too, and in
    the ephemeral range an outgoing connection's local port could take one at any time."""
    for _ in range(200):
        base = secrets.randbelow(30000 - 10000 - count) + 10000
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return list(range(base, base + count))
    raise RuntimeError(f"no {count} consecutive free ports between 10000 and 30000")


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


# --- SMTP peers --------------------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


class SinkHandler:
    """An aiosmtpd handler standing in for a mail server: records what it accepts and answers
    RCPT per recipient as the test planned (default 250)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.messages: list[Received] = []
        self.plans: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        self.delay = delay  # seconds to answer DATA: a slow server keeps deliveries in flight

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        with self.lock:
            plan = self.plans.get(address.lower())
            code = plan.pop(0) if plan else 250
        if code == 250:
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 Ok"
        if code == 451:
            return "451 4.3.0 Sink says: try again later"
        return f"{code} 5.1.1 <{address}>: Sink says: no such user"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
        if self.delay:  # like a server that queued the message and is slow to say so
            await asyncio.sleep(self.delay)
        return "250 2.0.0 Ok: sunk"


class LoopbackSMTP:
    """An aiosmtpd server on a free loopback port, running while the ``with`` block does."""

    def __init__(self, handler: Any) -> None:
        self.port = free_port()
        self.controller = Controller(handler, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> Self:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class Sink(LoopbackSMTP):
    def __init__(self, delay: float = 0.0) -> None:
        self.handler = SinkHandler(delay)
        super().__init__(self.handler)

    def plan(self, address: str, codes: list[int]) -> None:
        with self.handler.lock:
            self.handler.plans[address.lower()] = list(codes)

    def with_token(self, token: str) -> list[Received]:
        with self.handler.lock:
            return [m for m in self.handler.messages if token.encode() in m.data]

    def count(self) -> int:
        with self.handler.lock:
            return len(self.handler.messages)


class TcpProxy:
    """A TCP relay on loopback that a test can cut, to take the broker away from a service."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.up()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _up(self) -> None:
        self.server = await asyncio.start_server(
            self._client, "127.0.0.1", self.port, reuse_address=True
        )

    async def _down(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    def up(self) -> None:
        self._call(self._up())

    def down(self) -> None:
        self._call(self._down())

    def close(self) -> None:
        self.down()
        self.loop.call_soon_threadsafe(self.loop.stop)


class QueueIdSMTP(smtplib.SMTP):
    """smtplib that remembers the queue id from the last ``250 ... queued as <id>`` reply."""

    last_queue_id = ""

    def getreply(self) -> tuple[int, bytes]:
        code, text = super().getreply()
        if code == 250 and b"queued as " in text:
            self.last_queue_id = text.rsplit(b"queued as ", 1)[1].strip().decode()
        return code, text


# --- the gateway -------------------------------------------------------------------------------


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


# RabbitMQ's management API (scripts/ensure-rabbitmq.sh --management enables it for the tests):
# a vhost made and dropped over HTTP costs milliseconds, where each rabbitmqctl run starts an
# Erlang VM (about a second of CPU; three per gateway were minutes of the suite).
MANAGEMENT_API = "http://127.0.0.1:15672/api"
_AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()


def _management(method: str, path: str, body: dict[str, str] | None = None) -> None:
    request = urllib.request.Request(
        f"{MANAGEMENT_API}/{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": _AUTH, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60):
        pass


@functools.cache
def management_api() -> bool:
    try:
        _management("GET", "whoami")
    except (OSError, urllib.error.HTTPError):
        return False
    return True


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    name = f"moat-test-{uuid.uuid4().hex[:10]}"
    if management_api():
        _management("PUT", f"vhosts/{name}")
        _management(
            "PUT", f"permissions/{name}/guest", {"configure": ".*", "write": ".*", "read": ".*"}
        )
    else:
        rabbitmqctl("add_vhost", name)
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    try:
        yield name
    finally:
        if management_api():
            _management("DELETE", f"vhosts/{name}")
        else:
            rabbitmqctl("delete_vhost", name)


@contextmanager
def database(backend: str, workdir: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / 'moat.db'}"
        return
    import asyncpg

    name = f"moat_test_{uuid.uuid4().hex[:10]}"
    admin = POSTGRES_ADMIN_URL.replace("postgresql+asyncpg://", "postgresql://")

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


SERVICES = ("api", "delivery", "scanner", "ingress")


@dataclass
class Gateway:
    workdir: Path
    config: dict[str, Any]
    vhost: str
    token: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def smtp_port(self) -> int:
        return int(self.config["smtp"]["listen"].rsplit(":", 1)[1])

    def probe_url(self, service: str) -> str:
        """Where ingress, scanner or delivery serves /healthz, /readyz and /metrics."""
        return f"http://127.0.0.1:{self.config[service]['metrics_port']}"

    @property
    def api_url(self) -> str:
        return f"https://{self.config['api']['listen']}"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOAT_")}
        env["MOAT_CONFIG"] = str(self.workdir / "moat.yaml")
        env["MOAT_ADMIN_TOKEN"] = self.token
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, *names: str) -> None:
        for name in names or SERVICES:
            log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if not names or "ingress" in names:
            wait_for(self._smtp_ready, 30, "the SMTP listener")
        if not names or "api" in names:
            wait_for(self._api_ready, 30, "the API")

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        process = self.processes.pop(name, None)
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def stop_all(self) -> None:
        for name in ("ingress", "scanner", "delivery", "api"):
            self.stop(name)

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _smtp_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=1):
                return True
        except OSError:
            return False

    def _api_ready(self) -> bool:
        if not (self.workdir / "tls" / "api-cert.pem").exists():
            return False
        try:
            return self.http().get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    # --- talking to it ---

    def http(self) -> httpx.Client:
        context = ssl.create_default_context(cafile=self.workdir / "tls" / "api-cert.pem")
        return httpx.Client(
            base_url=self.api_url,
            verify=context,
            timeout=10,
            headers={"Authorization": f"Bearer {self.token}"},
        )

    def smtp(self) -> QueueIdSMTP:
        return QueueIdSMTP("127.0.0.1", self.smtp_port, timeout=30)

    def send(
        self,
        mail_from: str,
        rcpt_tos: list[str],
        body: str = "Hello.",
        subject: str = "test",
        extra_headers: dict[str, str] | None = None,
    ) -> str:
        """Send one message; return the queue id from the 250 reply."""
        message = make_message(mail_from, rcpt_tos, body, subject, extra_headers)
        with self.smtp() as client:
            client.ehlo("client.test")
            refused = client.sendmail(mail_from, rcpt_tos, message.as_bytes())
            assert not refused, refused
            return client.last_queue_id

    def message(self, message_id: str) -> dict[str, Any]:
        with self.http() as http:
            response = http.get(f"/v1/messages/{message_id}")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def wait_status(
        self, message_id: str, status: str | set[str], timeout: float = 30
    ) -> dict[str, Any]:
        wanted = {status} if isinstance(status, str) else status
        return wait_for(
            lambda: (m := self.message(message_id))["status"] in wanted and m,
            timeout,
            f"{message_id} to be {'/'.join(sorted(wanted))}",
            interval=0.1,
        )

    def statuses(self) -> dict[str, int]:
        async def count() -> dict[str, int]:
            repository = Repository(create_engine(self.config["database_url"]))
            try:
                return await repository.count_by_status()
            finally:
                await repository.close()

        return asyncio.run(count())

    def ready(self, queue: str) -> int:
        """Messages ready in ``queue``, exact and current (a passive declare; rabbitmqctl's
        figures lag by seconds)."""

        async def count() -> int:
            connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:5672/{self.vhost}")
            try:
                channel = await connection.channel()
                declared = await channel.declare_queue(queue, passive=True)
                return int(declared.declaration_result.message_count or 0)
            finally:
                await connection.close()

        return asyncio.run(count())

    def unscanned(self) -> int:
        statuses = self.statuses()
        return statuses.get("received", 0) + statuses.get("queued", 0)


def make_message(
    mail_from: str,
    rcpt_tos: list[str],
    body: str,
    subject: str,
    extra_headers: dict[str, str] | None = None,
) -> EmailMessage:
    message = EmailMessage(policy=SMTP_POLICY)  # CRLF line endings, as on the wire
    message["From"] = mail_from or "MAILER-DAEMON@outside.test"
    message["To"] = ", ".join(rcpt_tos)
    message["Subject"] = subject
    message["Message-ID"] = f"<{uuid.uuid4().hex}@outside.test>"
    message["Date"] = email.utils.formatdate(localtime=False)
    for name, value in (extra_headers or {}).items():
        message[name] = value
    message.set_content(body)
    return message


# The internet's DNS for every test gateway: a real DNS server on loopback. outside.test, the
# senders' domain of the tests, publishes SPF for loopback, so its mail passes SPF.
TEST_ZONE = {
    "outside.test": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"], "A": ["127.0.0.1"]},
    "_dmarc.outside.test": {"TXT": ["v=DMARC1; p=none"]},
}
_test_dns: FakeDNS | None = None


def test_dns() -> FakeDNS:
    global _test_dns
    if _test_dns is None:
        _test_dns = FakeDNS(TEST_ZONE).__enter__()
    return _test_dns


def gateway_config(
    workdir: Path,
    database_url: str,
    vhost: str,
    relay: Sink,
    smarthost: Sink,
    broker_port: int = 5672,
    **overrides: Any,
) -> dict[str, Any]:
    probe_ports = free_port_block(6)  # scanner, delivery, ingress, three extra scanners
    config: dict[str, Any] = {
        "env": "test",
        "log_level": "INFO",
        "database_url": database_url,
        "spool_dir": str(workdir / "spool"),
        "domains": {
            "example.test": {"relay": relay.address},
            "other.example.test": {"relay": relay.address},
        },
        "smtp": {
            "listen": f"127.0.0.1:{free_port()}",
            "hostname": "moat.test",
            "max_message_size": 200_000,
            "max_recipients": 10,
        },
        "api": {
            "listen": f"127.0.0.1:{free_port()}",
            "self_signed_dir": str(workdir / "tls"),
            # Outside dev the API needs a key; a test that makes links of its own reads it here.
            "signing_key": secrets.token_hex(32),
        },
        # No periodic digest: at midnight UTC it would mail the held mail of every running test.
        "digest": {"interval": 0},
        "webhooks": {"poll_interval": 0.2, "retry_schedule": [0.5, 1.0], "timeout": 5},
        "broker": {
            "url": f"amqp://guest:guest@127.0.0.1:{broker_port}/{vhost}",
            "publish_timeout": 3,
            "delivery_limit": 3,
        },
        # Probe ports of their own: two gateways (or a developer's make run) never share one;
        # a block, so that the extra scanners of `python -m services --scanners N` (the ports
        # after the highest) find theirs free too.
        "ingress": {"sweep_interval": 1, "sweep_grace": 3, "metrics_port": probe_ports[2]},
        "scanner": {"prefetch": 8, "metrics_port": probe_ports[0]},
        "dns": {"nameservers": ["127.0.0.1"], "port": test_dns().port, "timeout": 1},
        "delivery": {
            "retry_schedule": [1, 2],
            "retry_jitter": 0.1,
            "max_lifetime": 60,
            "smarthost": smarthost.address,
            "sweep_interval": 1,
            "sweep_grace": 3,
            "connect_timeout": 5,
            "command_timeout": 10,
            "metrics_port": probe_ports[1],
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            config.setdefault(key, {}).update(value)
        else:
            config[key] = value
    (workdir / "moat.yaml").write_text(yaml.safe_dump(config))
    upgrade(database_url)
    return config
