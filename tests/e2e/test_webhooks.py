"""Webhooks over real HTTPS (the API) and HTTP (a receiver on loopback that checks signatures
and fails when told): registration, signed events, retries and their visible failures, a
restart that resumes, and two API replicas that do not send an event twice."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from moat.db import create_engine
from moat.repository import Repository
from tests.harness import ROOT, Gateway, free_port, wait_for
from tests.support.people import GTUBE, WebClient, hold_spam, issue
from tests.support.receiver import Receiver, verify

pytestmark = pytest.mark.e2e


def _register(gateway: Gateway, url: str, events: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"url": url}
    if events is not None:
        body["events"] = events
    with gateway.http() as http:
        response = http.post("/v1/webhooks", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _deliveries(gateway: Gateway, webhook_id: str, **params: str) -> list[dict[str, Any]]:
    with gateway.http() as http:
        response = http.get(f"/v1/webhooks/{webhook_id}/deliveries", params=params)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["deliveries"]
    return found


def test_signed_events_reach_a_receiver_and_only_those_it_wants(
    gateway: Gateway, token: str
) -> None:
    with Receiver() as receiver:
        hook = _register(gateway, receiver.url, ["quarantined", "released", "delivered"])
        receiver.secret = hook["secret"]
        assert hook["secret"].startswith("whsec_")
        held = hold_spam(gateway, [f"ann-{token}@example.test"], f"hook {token}")
        other = hold_spam(gateway, [f"ann-{token}@example.test"], f"other {token}")
        # The body tells of the message as it is when the event goes out: wait for that
        # before changing it.
        wait_for(lambda: receiver.got(held) and receiver.got(other), 30, "the quarantined events")
        with WebClient(gateway) as web:
            web.sign_in(gateway.token)
            web.get(f"/ui/messages/{held}")
            assert web.post(f"/ui/messages/{held}/release").status_code == 303
            web.get(f"/ui/messages/{other}")
            assert web.post(f"/ui/messages/{other}/delete").status_code == 303
        wait_for(lambda: receiver.got(held, "delivered"), 30, "the delivered event")

        # Arrival order is not promised (a POST retried after a timeout arrives after a later
        # event); the events' ids and times are in lifecycle order, which receivers sort by.
        events = sorted(receiver.got(held), key=lambda d: int(d.payload["id"].split("_")[1]))
        assert [d.payload["type"] for d in events] == ["quarantined", "released", "delivered"]
        times = [d.payload["created_at"] for d in events]
        assert times == sorted(times), times
        assert [d.payload["type"] for d in receiver.got(other)] == ["quarantined"]  # no deleted
        for delivery in receiver.got(held) + receiver.got(other):
            assert delivery.verified and delivery.answered == 200
            assert delivery.headers["Moat-Event"] == delivery.payload["type"]
            assert delivery.headers["Content-Type"] == "application/json"
            # The signature covers the body: one byte changed and it no longer verifies.
            header = delivery.headers["Moat-Signature"]
            assert not verify(hook["secret"], header, delivery.body.replace(b"}", b" }", 1))
            assert not verify("whsec_another", header, delivery.body)
        quarantined = receiver.got(held, "quarantined")[0].payload
        assert quarantined["id"].startswith("evt_")
        assert quarantined["data"]["message"]["verdict"] == "spam"
        assert quarantined["data"]["message"]["recipients"] == [
            {"address": f"ann-{token}@example.test", "status": "quarantined"}
        ]

        with gateway.http() as http:
            listed = http.get("/v1/webhooks").json()["webhooks"]
            assert [h["url"] for h in listed if h["id"] == hook["id"]] == [receiver.url]
            assert all("secret" not in h for h in listed)  # shown once, at creation
            assert http.delete(f"/v1/webhooks/{hook['id']}").status_code == 200
            assert http.get(f"/v1/webhooks/{hook['id']}/deliveries").status_code == 404
            assert http.delete(f"/v1/webhooks/{hook['id']}").status_code == 404
        after = gateway.send("spammer@outside.test", [f"ann-{token}@example.test"], GTUBE)
        gateway.wait_status(after, "quarantined")
        more = hold_spam(gateway, [f"ann-{token}@example.test"], f"later {token}")
        assert not receiver.got(after) and not receiver.got(more)


def test_only_admins_manage_webhooks(gateway: Gateway, token: str) -> None:
    reader = issue(gateway, role="reader")
    user = issue(gateway, recipient=f"bo-{token}@example.test")
    for secret, may_read in ((reader["token"], True), (user["token"], False)):
        with gateway.http() as http:
            http.headers["Authorization"] = f"Bearer {secret}"
            assert http.get("/v1/webhooks").status_code == (200 if may_read else 403)
            refused = http.post("/v1/webhooks", json={"url": "https://hooks.test/x"})
            assert refused.status_code == 403
            assert refused.headers["content-type"] == "application/problem+json"
            assert http.post("/v1/digests/send").status_code == 403
    with gateway.http() as http:
        for body in (
            {"url": "ftp://hooks.test/x"},
            {"url": "https://"},
            {"url": "https://hooks.test/x", "events": ["exploded"]},
            {"url": "https://hooks.test/x", "events": []},
        ):
            bad = http.post("/v1/webhooks", json=body)
            assert bad.status_code == 422, body
            assert bad.headers["content-type"] == "application/problem+json"


def test_a_failing_receiver_is_retried_and_its_failures_are_visible(
    gateway: Gateway, token: str
) -> None:
    with Receiver() as flaky, Receiver() as broken:
        flaky.plan = [500, 503]  # then 200
        broken.always = 500
        flaky_hook = _register(gateway, flaky.url, ["quarantined"])
        broken_hook = _register(gateway, broken.url, ["quarantined"])
        dead_hook = _register(gateway, f"http://127.0.0.1:{free_port()}/gone", ["quarantined"])
        flaky.secret, broken.secret = flaky_hook["secret"], broken_hook["secret"]
        held = hold_spam(gateway, [f"cy-{token}@example.test"], f"retry {token}")

        wait_for(lambda: len(flaky.got(held)) == 3, 30, "three tries at the flaky receiver")
        (delivered,) = wait_for(
            lambda: _deliveries(gateway, flaky_hook["id"], status="delivered"),
            30,
            "the flaky receiver's delivery recorded",
        )
        assert delivered["attempts"] == 3 and delivered["delivered_at"]
        assert delivered["last_error"].startswith("HTTP 503")
        assert delivered["event_id"] == flaky.got(held)[0].payload["id"]
        # The same event each time: the receiver can tell a retry from a new event.
        assert len({d.payload["id"] for d in flaky.got(held)}) == 1

        for hook, error in ((broken_hook, "HTTP 500"), (dead_hook, "ConnectError")):
            (failed,) = wait_for(
                lambda hook=hook: _deliveries(gateway, hook["id"], status="failed"),
                30,
                f"the {error} receiver's failure recorded",
            )
            assert failed["attempts"] == 3  # the first try and the two retries of the schedule
            assert failed["last_error"].startswith(error), failed
            assert failed["next_attempt_at"] is None
        assert len(broken.got(held)) == 3
        with gateway.http() as http:
            for hook in (flaky_hook, broken_hook, dead_hook):
                http.delete(f"/v1/webhooks/{hook['id']}")


def _held(gateway: Gateway, message_ids: list[str]) -> bool:
    """Whether all these messages are quarantined, read from the database (the API may be
    down)."""

    async def check() -> bool:
        repository = Repository(create_engine(gateway.config["database_url"]))
        try:
            records = [await repository.get(m, with_history=False) for m in message_ids]
        finally:
            await repository.close()
        return all(r is not None and r.status == "quarantined" for r in records)

    return asyncio.run(check())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_restarts_resume_and_two_replicas_send_each_event_once(
    make_gateway: Callable[..., Gateway], backend: str, token: str
) -> None:
    gateway = make_gateway(backend)
    with Receiver() as receiver:
        hook = _register(gateway, receiver.url, ["quarantined"])
        receiver.secret = hook["secret"]
        # Slow answers keep each POST in flight across several polls of both replicas: a
        # delivery that the other replica could take as well would be sent twice.
        receiver.delay = 0.5
        before = hold_spam(gateway, [f"di-{token}@example.test"], f"before {token}")
        wait_for(lambda: receiver.got(before), 30, "the event before the stop")

        gateway.stop("api")  # events happen while no dispatcher runs
        meanwhile = [
            gateway.send("spammer@outside.test", [f"di-{token}@example.test"], GTUBE)
            for _ in range(3)
        ]
        wait_for(lambda: _held(gateway, meanwhile), 30, "the mail held while the API was down")

        # Two replicas at once: the harness's, and one more on a port of its own.
        gateway.start("api")
        env = {**gateway.env, "MOAT_API__LISTEN": f"127.0.0.1:{free_port()}"}
        with open(gateway.workdir / "api-2.log", "ab") as log:
            second = subprocess.Popen(
                [sys.executable, "-m", "services.api"], cwd=ROOT, env=env, stdout=log, stderr=log
            )
        try:
            during = [
                hold_spam(gateway, [f"di-{token}@example.test"], f"during {token} {n}")
                for n in range(6)
            ]
            everything = [before, *meanwhile, *during]
            wait_for(
                lambda: all(receiver.got(m) for m in everything), 60, "an event for every message"
            )
            wait_for(
                lambda: "HTTPS API" in (gateway.workdir / "api-2.log").read_text(),
                30,
                "the second replica",
            )
            # Let both dispatchers look again (each polls every 0.2 s): a stray duplicate
            # would show now; one more message proves both went round since.
            last = hold_spam(gateway, [f"di-{token}@example.test"], f"last {token}")
            wait_for(lambda: receiver.got(last), 30, "the last event")
        finally:
            second.terminate()
            second.wait(30)
    sent = Counter(d.payload["id"] for d in receiver.deliveries)
    assert set(sent.values()) == {1}, sent
    assert len(sent) == len(everything) + 1
