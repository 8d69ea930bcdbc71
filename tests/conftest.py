"""Fixtures: SMTP sinks on loopback, and gateways (the four real services) on a fresh RabbitMQ
vhost and a fresh SQLite or PostgreSQL database."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Gateway, Sink, database, gateway_config, rabbitmq_vhost

BACKENDS = ["sqlite", "postgresql"]

# The suite's own knobs: where the corpus and PostgreSQL are, how much of the corpus to run.
# They are no gateway settings, so they stay; every other MOAT_* variable goes.
SUITE_KNOBS = frozenset({"MOAT_CORPUS", "MOAT_TEST_POSTGRES_URL", "MOAT_AUTH_FULL_CORPUS"})


def pytest_sessionstart(session: pytest.Session) -> None:
    """The results must not depend on the user's settings: ``make run``'s MOAT_CONFIG, or a
    MOAT_DOMAINS left in the shell, would otherwise reach every Settings() a test builds."""
    for name in [n for n in os.environ if n.startswith("MOAT_") and n not in SUITE_KNOBS]:
        del os.environ[name]


@pytest.fixture(scope="session")
def relay_sink() -> Iterator[Sink]:
    """The organisation's mail server for the protected domains."""
    with Sink() as sink:
        yield sink


@pytest.fixture(scope="session")
def internet_sink() -> Iterator[Sink]:
    """The smarthost: stands in for the outside world (where DSNs to senders go)."""
    with Sink() as sink:
        yield sink


@contextmanager
def running_gateway(
    backend: str,
    workdir: Path,
    relay: Sink,
    internet: Sink,
    *,
    start: bool = True,
    **overrides: Any,
) -> Iterator[Gateway]:
    with ExitStack() as stack:
        vhost = stack.enter_context(rabbitmq_vhost())
        database_url = stack.enter_context(database(backend, workdir))
        config = gateway_config(workdir, database_url, vhost, relay, internet, **overrides)
        gateway = Gateway(workdir, config, vhost, token=uuid.uuid4().hex)
        stack.callback(gateway.stop_all)
        if start:
            gateway.start()
        try:
            yield gateway
        except BaseException:
            for name in ("ingress", "scanner", "delivery", "api"):
                print(f"----- {name} log (tail) -----")
                print("\n".join(gateway.log(name).splitlines()[-40:]))
            raise


@pytest.fixture(scope="module", params=BACKENDS)
def gateway(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    relay_sink: Sink,
    internet_sink: Sink,
) -> Iterator[Gateway]:
    """A gateway shared by the tests of a module, once per database backend."""
    workdir = tmp_path_factory.mktemp(f"gw-{request.param}")
    failed_before = request.session.testsfailed
    with running_gateway(request.param, workdir, relay_sink, internet_sink) as gw:
        yield gw
        if request.session.testsfailed > failed_before:
            for name in ("ingress", "scanner", "delivery", "api"):
                print(f"----- {name} log (tail) -----")
                print("\n".join(gw.log(name).splitlines()[-40:]))


@pytest.fixture
def make_gateway(
    tmp_path: Path,
    relay_sink: Sink,
    internet_sink: Sink,
) -> Iterator[Callable[..., Any]]:
    """A private gateway for a test that stops, kills or cuts off its services."""
    with ExitStack() as stack:

        def make(backend: str = "sqlite", **kwargs: Any) -> Gateway:
            return stack.enter_context(
                running_gateway(backend, tmp_path, relay_sink, internet_sink, **kwargs)
            )

        yield make


@pytest.fixture
def token() -> str:
    """A unique string to find one test's mail at the sinks."""
    return uuid.uuid4().hex


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Any]:
    """A real S3-compatible server on loopback (moto in server mode) for the S3 store."""
    from tests.support.s3 import start_s3_server

    server = start_s3_server()
    try:
        yield server
    finally:
        server.stop()
