"""Observability, on a running gateway: every service's /metrics counts exactly the mail sent
through it, the probes say when a service cannot work, ``python -m services`` gives every
scanner a port of its own, and JSON logs let one message be followed across the services."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.scanner.checks import GTUBE
from tests.e2e.test_supervisor import supervisor
from tests.harness import Gateway, Sink, TcpProxy, wait_for

pytestmark = pytest.mark.e2e

PROBED = ("ingress", "scanner", "delivery")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, verify: Any = True) -> Samples:
    response = httpx.get(f"{url}/metrics", timeout=10, verify=verify)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def status(url: str) -> int:
    """The status of GET ``url``; 0 while nothing listens there (the process is starting)."""
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.TransportError:
        return 0


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def api_scrape(gateway: Gateway) -> Samples:
    with gateway.http() as http:
        response = http.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_every_counter_moves_by_exactly_the_mail_sent(
    make_gateway: Callable[..., Gateway], relay_sink: Sink, token: str
) -> None:
    gateway = make_gateway("sqlite", api={"metrics_cache_seconds": 0})
    for service in PROBED:
        wait_for(
            lambda s=service: status(f"{gateway.probe_url(s)}/readyz") == 200,
            20,
            f"{service} ready",
        )
        health = httpx.get(f"{gateway.probe_url(service)}/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
    before = {service: scrape(gateway.probe_url(service)) for service in PROBED}

    clean = [
        gateway.send("alice@outside.test", ["bob@example.test"], f"Hello {token} {n}")
        for n in range(3)
    ]
    spam = gateway.send("alice@outside.test", ["bob@example.test"], f"{GTUBE} {token}")
    for message_id in clean:
        gateway.wait_status(message_id, "delivered")
    gateway.wait_status(spam, "quarantined")
    wait_for(lambda: len(relay_sink.with_token(token)) == 3, 10, "three at the sink")

    # The last counter of each stage moves after the commit: wait for it, then compare all.
    def settled() -> dict[str, Samples] | None:
        now = {service: scrape(gateway.probe_url(service)) for service in PROBED}
        done = moved(
            before["delivery"],
            now["delivery"],
            "moat_consumer_messages_total",
            queue="deliver",
            result="ok",
        )
        scanned = moved(
            before["scanner"],
            now["scanner"],
            "moat_consumer_messages_total",
            queue="scan",
            result="ok",
        )
        return now if done >= 3 and scanned >= 4 else None

    after = wait_for(settled, 10, "the acks to be counted")
    ingress, scanner, delivery = ((before[s], after[s]) for s in ("ingress", "scanner", "delivery"))
    assert moved(*ingress, "moat_ingress_messages_total", result="queued") == 4
    assert moved(*ingress, "moat_ingress_messages_total", result="failed") == 0
    assert moved(*ingress, "moat_ingress_time_to_250_seconds_count") == 4
    assert moved(*ingress, "moat_ingress_time_to_250_seconds_sum") > 0

    assert moved(*scanner, "moat_scanner_messages_total", verdict="clean", action="deliver") == 3
    assert moved(*scanner, "moat_scanner_messages_total", verdict="spam", action="quarantine") == 1
    assert moved(*scanner, "moat_scanner_scan_duration_seconds_count") == 4
    assert moved(*scanner, "moat_scanner_check_duration_seconds_count", check="gtube") == 4
    assert moved(*scanner, "moat_scanner_check_duration_seconds_count", check="eicar") == 4
    assert moved(*scanner, "moat_consumer_messages_total", queue="scan", result="ok") == 4
    assert moved(*scanner, "moat_consumer_messages_total", queue="scan", result="retry") == 0
    assert value(after["scanner"], "moat_broker_connected") == 1

    assert moved(*delivery, "moat_delivery_attempts_total", status="delivered") == 3
    assert moved(*delivery, "moat_delivery_replies_total", reply_class="2xx") == 3
    assert moved(*delivery, "moat_delivery_attempt_duration_seconds_count") == 3
    assert moved(*delivery, "moat_end_to_end_seconds_count", status="delivered") == 3
    assert moved(*delivery, "moat_consumer_messages_total", queue="deliver", result="ok") == 3
    # Nothing counted in a process that did not do it: each process has its own registry.
    assert value(after["delivery"], "moat_ingress_messages_total", result="queued") == 0
    assert (
        value(after["ingress"], "moat_scanner_messages_total", verdict="clean", action="deliver")
        == 0
    )

    # The API reads the queues from RabbitMQ: one consumer on scan and on deliver, none ready.
    api = api_scrape(gateway)
    assert value(api, "moat_queue_consumers", queue="scan") == 1
    assert value(api, "moat_queue_consumers", queue="deliver") == 1
    assert value(api, "moat_queue_messages", queue="scan") == 0
    assert value(api, "moat_queue_messages", queue="dead") == 0
    assert value(api, "moat_messages", status="delivered") == 3
    assert value(api, "moat_broker_connected") == 1


def test_a_refused_recipient_is_a_5xx_reply_and_a_bounce(
    make_gateway: Callable[..., Gateway], relay_sink: Sink, token: str
) -> None:
    gateway = make_gateway("sqlite")
    url = gateway.probe_url("delivery")
    wait_for(lambda: status(f"{url}/readyz") == 200, 20, "delivery ready")
    before = scrape(url)
    nobody = f"nobody-{token}@example.test"
    relay_sink.plan(nobody, [550])
    message_id = gateway.send("alice@outside.test", [nobody], f"Hi {token}")
    gateway.wait_status(message_id, "bounced")
    # Then its DSN goes to the sender through the smarthost: a delivered message of its own.
    after = wait_for(
        lambda: (
            (now := scrape(url))
            and moved(before, now, "moat_delivery_attempts_total", status="delivered") >= 1
            and now
        ),
        20,
        "the DSN delivered",
    )
    assert moved(before, after, "moat_delivery_replies_total", reply_class="5xx") == 1
    assert moved(before, after, "moat_delivery_attempts_total", status="bounced") == 1
    assert moved(before, after, "moat_end_to_end_seconds_count", status="bounced") == 1
    assert moved(before, after, "moat_delivery_replies_total", reply_class="2xx") == 1
    assert moved(before, after, "moat_delivery_replies_total", reply_class="4xx") == 0


def test_a_failing_check_and_the_dead_letter_are_counted(
    make_gateway: Callable[..., Gateway], token: str
) -> None:
    """A clamd that does not answer: each scan's clamav check fails (a *_FAIL finding, so the
    message is retried, then dead-lettered)."""
    gateway = make_gateway(
        "sqlite",
        scanner={"clamav": {"enabled": True, "tcp": "127.0.0.1:1", "connect_timeout": 1}},
    )
    wait_for(lambda: status(f"{gateway.probe_url('scanner')}/readyz") == 200, 20, "ready")
    before = scrape(gateway.probe_url("scanner"))
    message_id = gateway.send("alice@outside.test", ["bob@example.test"], f"Hi {token}")
    gateway.wait_status(message_id, "failed", timeout=60)
    after = wait_for(
        lambda: (s := scrape(gateway.probe_url("scanner")))
        and moved(before, s, "moat_consumer_messages_total", queue="scan", result="dead_lettered")
        and s,
        10,
        "the dead letter counted",
    )
    failures = sum(
        moved(before, after, "moat_scanner_check_failures_total", check="clamav", reason=reason)
        for reason in ("error", "timeout")
    )
    # delivery_limit 3 in the test gateways: three scans, three failures, one dead letter.
    assert failures == 3
    assert moved(before, after, "moat_consumer_messages_total", queue="scan", result="retry") == 2
    assert (
        moved(before, after, "moat_consumer_messages_total", queue="scan", result="dead_lettered")
        == 1
    )


def test_readyz_says_not_ready_while_the_broker_is_away(
    make_gateway: Callable[..., Gateway],
) -> None:
    proxy = TcpProxy(5672)
    try:
        gateway = make_gateway("sqlite", start=False, broker_port=proxy.port)
        gateway.start(*PROBED)

        def statuses() -> dict[str, int]:
            return {s: status(f"{gateway.probe_url(s)}/readyz") for s in PROBED}

        wait_for(lambda: set(statuses().values()) == {200}, 30, "all ready")
        proxy.down()
        wait_for(lambda: set(statuses().values()) == {503}, 30, "all not ready")
        answer = httpx.get(f"{gateway.probe_url('scanner')}/readyz").json()
        assert answer["status"] == "not ready" and "broker" in answer["missing"]
        for service in PROBED:  # alive all the same: no reason to restart it
            assert httpx.get(f"{gateway.probe_url(service)}/healthz").status_code == 200
            metrics = scrape(gateway.probe_url(service))
            assert value(metrics, "moat_broker_connected") == 0
        proxy.up()
        wait_for(lambda: set(statuses().values()) == {200}, 60, "all ready again")
    finally:
        proxy.close()


def test_the_probe_port_answers_only_what_it_serves(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway("sqlite", start=False)
    gateway.start("delivery")
    url = gateway.probe_url("delivery")
    wait_for(lambda: status(f"{url}/readyz") == 200, 20, "ready")
    assert httpx.get(f"{url}/").status_code == 404
    assert httpx.get(f"{url}/metrics/../etc").status_code == 404
    assert httpx.post(f"{url}/metrics").status_code == 405
    assert httpx.get(f"{url}/healthz?x=1").status_code == 200


def test_the_supervisor_gives_each_scanner_its_own_port(
    make_gateway: Callable[..., Gateway],
) -> None:
    with supervisor(make_gateway, "--scanners", "2") as moat:
        moat.wait_log("Moat is running", 60)
        ports = {}
        for name in ("scanner-1", "scanner-2", "delivery", "ingress"):
            found = moat.wait_log(
                rf"started {name} \(pid \d+\): /healthz, /readyz, /metrics on "
                r"http://127\.0\.0\.1:(\d+)",
                5,
            )
            ports[name] = int(found.group(1))
        config = moat.gateway.config
        base = config["scanner"]["metrics_port"]
        highest = max(base, config["delivery"]["metrics_port"], config["ingress"]["metrics_port"])
        assert ports["scanner-1"] == base and ports["scanner-2"] == highest + 1
        assert len(set(ports.values())) == 4
        for name, port in ports.items():
            wait_for(
                lambda p=port: status(f"http://127.0.0.1:{p}/readyz") == 200,
                20,
                f"{name} ready",
            )
        # Two processes, two registries: both consume the scan queue, each says so itself.
        for name in ("scanner-1", "scanner-2"):
            samples = scrape(f"http://127.0.0.1:{ports[name]}")
            assert value(samples, "moat_broker_connected") == 1


def test_json_logs_follow_one_message_through_every_service(
    make_gateway: Callable[..., Gateway], relay_sink: Sink, token: str
) -> None:
    gateway = make_gateway("sqlite", log_format="json")
    secret_body = f"body-{token}"
    message_id = gateway.send(
        "alice@outside.test", ["bob@example.test"], f"{secret_body}", subject=f"subject-{token}"
    )
    gateway.wait_status(message_id, "delivered")
    with gateway.http() as http:  # an access log line in the API's log
        assert http.get(f"/v1/messages/{message_id}").status_code == 200

    def lines(service: str) -> list[dict[str, Any]]:
        parsed = []
        for line in gateway.log(service).splitlines():
            if not line.strip():
                continue
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                raise AssertionError(f"{service}: not a JSON line: {line!r}") from None
        return parsed

    def about_it(service: str) -> list[dict[str, Any]]:
        return [entry for entry in lines(service) if entry.get("queue_id") == message_id]

    # The delivery line is written after the commit the API shows: wait for it.
    wait_for(lambda: about_it("delivery"), 10, "delivery's line about the message")
    for service in ("ingress", "scanner", "delivery", "api"):
        entries = lines(service)
        assert entries, f"{service} logged nothing"
        for entry in entries:
            assert {"timestamp", "level", "service", "logger", "event"} <= entry.keys(), entry
            assert entry["service"] == service
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["timestamp"])
    assert any("queued" in e["event"] for e in about_it("ingress"))
    assert any("clean" in e["event"] for e in about_it("scanner"))
    assert any("-> delivered" in e["event"] for e in about_it("delivery"))
    # Every line whose text names the message carries its id as a field, so jq finds them all.
    for service in ("ingress", "scanner", "delivery"):
        for entry in lines(service):
            if message_id in entry["event"]:
                assert entry.get("queue_id") == message_id, entry
    # uvicorn's access log, in the same format, and no line holds a body or a subject.
    assert any(
        entry["logger"] == "uvicorn.access" and f"/v1/messages/{message_id}" in entry["event"]
        for entry in lines("api")
    )
    for service in ("ingress", "scanner", "delivery", "api"):
        assert secret_body not in gateway.log(service)
        assert f"subject-{token}" not in gateway.log(service)
