"""The observability pieces on their own: the dashboard and the alert rules name only metrics
that exist, the JSON log format, reply classes, and the supervisor's probe ports."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from moat import logs, metrics
from moat.settings import Settings
from services.__main__ import Child, probes_at, scanner_port
from services.api.middleware import ApiMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "moat.json"
ALERTS = ROOT / "deploy" / "prometheus" / "moat-alerts.yaml"
OBSERVABILITY_DOC = ROOT / "docs" / "observability.md"

_SUFFIX = re.compile(r"_(bucket|sum|count|total|created)$")


def families(registry: CollectorRegistry) -> set[str]:
    return {family.name for family in registry.collect()}


def defined() -> set[str]:
    return families(metrics.Metrics().registry) | families(ApiMetrics().registry)


def referenced(text: str) -> set[str]:
    """The metric families an expression names (a histogram's _bucket is its family)."""
    return {_SUFFIX.sub("", name) for name in re.findall(r"\bmoat_[a-z0-9_]+", text)}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def test_the_dashboard_names_only_metrics_that_exist() -> None:
    exprs = dashboard_exprs()
    names = set().union(*(referenced(expr) for expr in exprs))
    assert len(exprs) >= 20 and len(names) >= 15  # the check looked at something
    assert names - defined() == set()
    # And the check can fail: a name that is not defined is found out.
    assert referenced("rate(moat_scanner_verdicts_total[5m])") - defined() == {
        "moat_scanner_verdicts"
    }


def test_every_metric_is_on_the_dashboard_and_in_the_docs() -> None:
    """A metric nobody shows or documents is a metric nobody reads."""
    shown = set().union(*(referenced(expr) for expr in dashboard_exprs()))
    assert defined() - shown == set()
    documented = referenced(OBSERVABILITY_DOC.read_text())
    assert defined() - documented == set()


def test_the_alert_rules_are_well_formed_and_name_only_metrics_that_exist() -> None:
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    # What the issue asks for: queue backing up, dead letters, delivery failing, clamd down.
    assert {
        "MoatScanQueueBackingUp",
        "MoatDeadLetters",
        "MoatDeliveryFailing",
        "MoatClamdDown",
    } <= names
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        used = referenced(rule["expr"])
        assert used, rule["alert"]
        assert used - defined() == set(), rule["alert"]


@pytest.mark.parametrize(
    ("code", "no_route", "expected"),
    [
        (250, False, "2xx"),
        (451, False, "4xx"),
        (550, False, "5xx"),
        (354, False, "other"),
        (None, False, "network"),
        (None, True, "no_route"),
    ],
)
def test_reply_classes(code: int | None, no_route: bool, expected: str) -> None:
    assert metrics.reply_class(code, no_route) == expected


def test_end_to_end_is_observed_for_final_statuses_only() -> None:
    m = metrics.Metrics()
    m.attempted("deferred", ["4xx"], 10.0)
    m.attempted("delivered", ["2xx", "2xx"], 12.0)
    value = m.registry.get_sample_value
    assert value("moat_end_to_end_seconds_count", {"status": "deferred"}) is None
    assert value("moat_end_to_end_seconds_count", {"status": "delivered"}) == 1
    assert value("moat_end_to_end_seconds_sum", {"status": "delivered"}) == 12.0
    assert value("moat_delivery_replies_total", {"reply_class": "2xx"}) == 2
    assert value("moat_delivery_attempts_total", {"status": "deferred"}) == 1


def log_lines(log_format: logs.LogFormat, emit: Any) -> list[str]:
    """What ``emit`` logs under ``setup_logging``; the root logger as it was afterwards."""
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    stream = io.StringIO()
    logs.setup_logging("scanner", "INFO", log_format)
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    try:
        emit()
    finally:
        logs.bind_queue_id(None)
        logging.captureWarnings(False)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    return stream.getvalue().splitlines()


def test_json_lines_carry_the_queue_id_from_the_context_or_the_call() -> None:
    def emit() -> None:
        log = logging.getLogger("scanner")
        log.info("no message yet")
        logs.bind_queue_id("01TESTCONTEXT")
        logging.getLogger("aio_pika.some").error("a library's line")
        log.warning("explicit", extra={"queue_id": "01TESTEXPLICIT", "attempt": 2})
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            log.exception("failed")

    lines = [json.loads(line) for line in log_lines("json", emit)]
    assert [line["event"] for line in lines] == [
        "no message yet",
        "a library's line",
        "explicit",
        "failed",
    ]
    assert "queue_id" not in lines[0]
    assert lines[1]["queue_id"] == "01TESTCONTEXT" and lines[1]["logger"] == "aio_pika.some"
    assert lines[2]["queue_id"] == "01TESTEXPLICIT" and lines[2]["attempt"] == 2
    assert lines[3]["queue_id"] == "01TESTCONTEXT"
    assert "ValueError: boom" in lines[3]["exception"]
    for line in lines:
        assert line["service"] == "scanner"
        assert line["level"] in {"info", "warning", "error"}
        assert line["timestamp"].endswith("+00:00")


def test_the_console_format_names_the_message_once() -> None:
    def emit() -> None:
        logs.bind_queue_id("01TESTCONTEXT")
        logging.getLogger("scanner").info("01TESTCONTEXT clean")
        logging.getLogger("moat.broker").info("could not ack")

    first, second = log_lines("console", emit)
    assert first.endswith("scanner INFO scanner: 01TESTCONTEXT clean")
    assert second.endswith("scanner INFO moat.broker: [01TESTCONTEXT] could not ack")


def test_each_scanner_replica_gets_its_own_probe_port() -> None:
    defaults = Settings()
    ports = [defaults.scanner.metrics_port, defaults.delivery.metrics_port]
    ports.append(defaults.ingress.metrics_port)
    # As k8s/ and services/healthcheck.py have them.
    assert ports == [9101, 9102, 9103]
    assert [scanner_port(defaults, n) for n in (1, 2, 3)] == [9101, 9104, 9105]
    settings = Settings(scanner={"metrics_port": 9200})  # type: ignore[arg-type]
    assert [scanner_port(settings, n) for n in (1, 2, 3)] == [9200, 9201, 9202]
    off = Settings(scanner={"metrics_port": 0})  # type: ignore[arg-type]
    assert scanner_port(off, 2) == 0
    child = Child.of("scanner", "scanner-2", {"MOAT_SCANNER__METRICS_PORT": "9201"})
    assert probes_at(settings, child).endswith("http://127.0.0.1:9201")
    assert probes_at(settings, Child.of("delivery")).endswith("http://127.0.0.1:9102")
    assert probes_at(off, Child.of("scanner", None, {"MOAT_SCANNER__METRICS_PORT": "0"})) == ""


def test_an_event_loop_never_waits_for_a_blocked_log_stream() -> None:
    """A line logged on an event loop is queued; the writer thread writes it once the stream
    unblocks; a flush (what logging.shutdown does at exit) waits until every line is out, in
    the order logged. Lines from a thread without a loop come after the queued ones."""

    class BlockedStream(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.unblocked = threading.Event()

        def write(self, text: str) -> int:
            self.unblocked.wait(10)
            return super().write(text)

    root = logging.getLogger()
    saved = list(root.handlers), root.level
    stream = BlockedStream()
    logs.setup_logging("ingress", "INFO", "console")
    handler = root.handlers[0]
    assert isinstance(handler, logs.BackgroundStreamHandler)
    handler.setStream(stream)
    log = logging.getLogger("services.ingress.handler")

    async def accept() -> float:
        started = time.perf_counter()
        for n in range(100):
            logs.bind_queue_id(f"01TESTQUEUE{n:03d}")
            log.info("queued %s", f"01TESTQUEUE{n:03d}")
        logs.bind_queue_id(None)
        return time.perf_counter() - started

    try:
        seconds = asyncio.run(accept())
        assert seconds < 1.0, "the loop waited for the stream"
        assert stream.getvalue() == ""
        stream.unblocked.set()
        log.info("after the loop")  # no loop here: written after the queued lines
        handler.flush()
        lines = stream.getvalue().splitlines()
    finally:
        logging.captureWarnings(False)
        handler.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert len(lines) == 101
    assert [line.rsplit(" ", 1)[1] for line in lines[:100]] == [
        f"01TESTQUEUE{n:03d}" for n in range(100)
    ]
    assert lines[0].endswith("ingress INFO services.ingress.handler: queued 01TESTQUEUE000")
    assert lines[100].endswith("after the loop")


def test_logging_shutdown_writes_the_queued_lines_and_returns() -> None:
    """logging.shutdown (at exit) holds the handler's lock while it flushes and closes: the
    writer thread must not need that lock to empty the queue."""

    class SlowStream(io.StringIO):
        def write(self, text: str) -> int:
            time.sleep(0.002)
            return super().write(text)

    stream = SlowStream()
    handler = logs.BackgroundStreamHandler(stream)
    handler.setFormatter(logs.ConsoleFormatter("ingress"))
    log = logging.getLogger("test.shutdown")
    log.propagate = False
    log.addHandler(handler)

    async def accept() -> None:
        for n in range(50):
            log.warning("line %d", n)

    try:
        asyncio.run(accept())
        done = threading.Event()

        def shutdown() -> None:
            logging.shutdown([weakref.ref(handler)])
            done.set()

        threading.Thread(target=shutdown, daemon=True).start()
        assert done.wait(10), "logging.shutdown deadlocked with the writer thread"
    finally:
        log.removeHandler(handler)
        log.propagate = True
    lines = stream.getvalue().splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == [str(n) for n in range(50)]


def test_lines_logged_together_are_written_together() -> None:
    """A burst of lines from the event loop costs the writer one write, not one per line."""

    class CountingStream(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            self.writes += 1
            return super().write(text)

    stream = CountingStream()
    handler = logs.BackgroundStreamHandler(stream)
    handler.setFormatter(logs.ConsoleFormatter("scanner"))
    log = logging.getLogger("test.bursts")
    log.propagate = False
    log.addHandler(handler)

    async def judge() -> None:
        for n in range(50):
            log.warning("line %d", n)

    try:
        asyncio.run(judge())
        handler.flush()
    finally:
        log.removeHandler(handler)
        log.propagate = True
        handler.close()
    lines = stream.getvalue().splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == [str(n) for n in range(50)]
    assert stream.writes <= 3
