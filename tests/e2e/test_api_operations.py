"""The API's operational side over real HTTPS against the running gateway: feedback learned by
the running scanner, stats, the audit log, the health probes and metrics, bounded bodies, the
access log, and what it answers while the database or the broker is gone."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from moat.db import classifier_learned, classifier_state, create_engine, feedback
from services.scanner.checks import GTUBE
from tests.conftest import BACKENDS, running_gateway
from tests.harness import POSTGRES_ADMIN_URL, Gateway, Sink, TcpProxy, wait_for

pytestmark = pytest.mark.e2e

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module", params=BACKENDS)
def gateway(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    relay_sink: Sink,
    internet_sink: Sink,
) -> Iterator[Gateway]:
    """Scanners look for feedback to learn every 0.3 s."""
    workdir = tmp_path_factory.mktemp(f"ops-{request.param}")
    with running_gateway(
        request.param,
        workdir,
        relay_sink,
        internet_sink,
        scanner={"classifier": {"poll_interval": 0.3}},
        api={"metrics_cache_seconds": 0},
    ) as gw:
        yield gw


def rows(gateway: Gateway, statement: Any) -> list[Any]:
    async def run() -> list[Any]:
        engine = create_engine(gateway.config["database_url"])
        try:
            async with engine.connect() as conn:
                return list((await conn.execute(statement)).all())
        finally:
            await engine.dispose()

    return asyncio.run(run())


def generation(gateway: Gateway) -> int:
    found = rows(gateway, select(classifier_state.c.generation))
    return int(found[0][0]) if found else 0


def issue(gateway: Gateway, **body: Any) -> str:
    with gateway.http() as http:
        response = http.post("/v1/tokens", json={"name": "ops", **body})
    assert response.status_code == 201, response.text
    secret: str = response.json()["token"]
    return secret


def as_token(gateway: Gateway, secret: str) -> httpx.Client:
    client = gateway.http()
    client.headers["Authorization"] = f"Bearer {secret}"
    return client


def results_of(gateway: Gateway, message_id: str) -> list[str | None]:
    query = select(feedback.c.result).where(feedback.c.message_id == message_id)
    return [row[0] for row in rows(gateway, query.order_by(feedback.c.id))]


def test_feedback_through_the_api_is_learned_by_the_running_scanner(
    gateway: Gateway, token: str
) -> None:
    bob = f"bob-{token}@example.test"
    held = gateway.send("alice@outside.test", [bob], f"{token} {GTUBE.decode()}")
    gateway.wait_status(held, "quarantined")  # its copy is kept
    before = generation(gateway)
    url = f"/v1/messages/{held}/feedback"

    with as_token(gateway, issue(gateway, recipient=bob)) as http:
        accepted = http.post(url, json={"label": "ham"})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json() == {"message_id": held, "label": "ham", "status": "pending"}
    # Recorded, not learned by the API: pending, or already claimed by a scanner.
    assert results_of(gateway, held) in ([None], ["claimed"], ["learned"])
    wait_for(lambda: results_of(gateway, held) == ["learned"], 20, "the scanner to learn it")
    assert generation(gateway) == before + 1
    learned = rows(
        gateway,
        select(classifier_learned.c.label, classifier_learned.c.source).where(
            classifier_learned.c.message_id == held
        ),
    )
    assert learned == [("ham", "api")]
    # Log lines reach the file from a writer thread (moat/logs.py): wait for them, briefly.
    wait_for(lambda: f"{held} as ham: learned" in gateway.log("scanner"), 10, "the line")
    assert f"{held} as ham: learned" in gateway.log("scanner")

    with gateway.http() as http:  # the same again counts once
        assert http.post(url, json={"label": "ham"}).status_code == 202
    wait_for(lambda: results_of(gateway, held) == ["learned", "already"], 20, "the second")
    assert generation(gateway) == before + 1

    delivered = gateway.send("alice@outside.test", [bob], f"fine {token}")
    gateway.wait_status(delivered, "delivered")  # its copy is gone
    with gateway.http() as http:
        gone = http.post(f"/v1/messages/{delivered}/feedback", json={"label": "spam"})
        assert gone.status_code == 410 and gone.headers["content-type"] == PROBLEM
        unknown = http.post(
            "/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV/feedback", json={"label": "ham"}
        )
        assert unknown.status_code == 404
        assert http.post(url, json={"label": "maybe"}).status_code == 422
    with as_token(gateway, issue(gateway, role="reader")) as http:
        assert http.post(url, json={"label": "spam"}).status_code == 403
    assert len(results_of(gateway, held)) == 2


def test_feedback_whose_copy_is_gone_is_settled_as_gone(gateway: Gateway, token: str) -> None:
    """Recorded by a release or before a purge, the copy gone by the time a scanner looks."""
    held = gateway.send("alice@outside.test", [f"bob-{token}@example.test"], GTUBE.decode())
    gateway.wait_status(held, "quarantined")
    with gateway.http() as http:
        assert http.post(f"/v1/messages/{held}/feedback", json={"label": "spam"}).status_code == 202
        # (the scanner may learn it first: then the copy was there, and that is fine too)
    [path] = list((gateway.workdir / "spool").rglob(f"{held}.eml"))
    path.unlink()
    with gateway.http() as http:
        assert http.post(f"/v1/messages/{held}/feedback", json={"label": "ham"}).status_code == 410
    wait_for(lambda: None not in results_of(gateway, held), 20, "the row to be settled")
    assert results_of(gateway, held)[0] in ("learned", "gone")


def test_stats_count_a_window_and_show_the_queues(gateway: Gateway, token: str) -> None:
    since = datetime.now(UTC)  # the module's earlier mail is older
    clean = gateway.send("alice@outside.test", [f"bob-{token}@example.test"], f"hi {token}")
    spam = gateway.send("alice@outside.test", [f"bob-{token}@example.test"], GTUBE.decode())
    gateway.wait_status(clean, "delivered")
    gateway.wait_status(spam, "quarantined")
    with as_token(gateway, issue(gateway, role="reader")) as http:
        response = http.get("/v1/stats", params={"since": since.isoformat()})
    assert response.status_code == 200, response.text
    stats = response.json()
    assert stats["messages"]["total"] == 2
    assert stats["messages"]["by_status"]["delivered"] == 1
    assert stats["messages"]["by_status"]["quarantined"] == 1
    assert stats["messages"]["by_status"]["bounced"] == 0  # every status, even at 0
    assert stats["messages"]["by_verdict"] == {"clean": 1, "spam": 1, "virus": 0, "policy": 0}
    assert stats["broker"]["reachable"] is True
    queues = {q["name"]: q for q in stats["broker"]["queues"]}
    assert {"scan", "deliver", "dead"} <= set(queues)
    assert queues["scan"]["consumers"] >= 1 and queues["deliver"]["consumers"] >= 1
    assert all(q["messages"] >= 0 for q in queues.values())

    with gateway.http() as http:
        day = http.get("/v1/stats").json()  # default: the last 24 hours
        assert day["messages"]["total"] >= 2
        assert datetime.fromisoformat(day["until"]) - datetime.fromisoformat(
            day["since"]
        ) == timedelta(hours=24)
        assert http.get("/v1/stats", params={"since": "yesterday"}).status_code == 422
    with as_token(gateway, issue(gateway, recipient=f"bob-{token}@example.test")) as http:
        assert http.get("/v1/stats").status_code == 403


def test_the_audit_log_pages_newest_first_with_filters(gateway: Gateway, token: str) -> None:
    for n in range(5):
        issue(gateway, recipient=f"audit{n}-{token}@example.test")
    with as_token(gateway, issue(gateway, role="reader")) as http:
        seen: list[dict[str, Any]] = []
        cursor: int | None = None
        while True:
            params: dict[str, Any] = {"limit": 2, "action": "token_issued"}
            if cursor is not None:
                params["cursor"] = cursor
            page = http.get("/v1/audit", params=params).json()
            assert page["count"] == len(page["entries"]) <= 2
            seen.extend(page["entries"])
            cursor = page["next"]
            if cursor is None:
                break
        ids = [entry["id"] for entry in seen]
        assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
        assert {entry["action"] for entry in seen} == {"token_issued"}
        mine = [entry["detail"] for entry in seen if token in entry["detail"]]
        assert [re.search(r"audit(\d)-", d).group(1) for d in mine] == ["4", "3", "2", "1", "0"]  # type: ignore[union-attr]
        assert all(entry["actor"] == "admin token (settings)" for entry in seen[:5])
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert http.get("/v1/audit", params={"since": future}).json()["entries"] == []
        assert (
            http.get("/v1/audit", params={"message_id": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}).json()[
                "count"
            ]
            == 0
        )
        assert http.get("/v1/audit", params={"cursor": "x"}).status_code == 422
        assert http.get("/v1/audit", params={"limit": 0}).status_code == 422
    with as_token(gateway, issue(gateway, domain="example.test")) as http:
        refused = http.get("/v1/audit")
        assert refused.status_code == 403 and refused.headers["content-type"] == PROBLEM


def test_health_readiness_and_metrics_need_no_token(gateway: Gateway, token: str) -> None:
    with gateway.http() as http:
        http.headers.pop("Authorization")
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = wait_for(lambda: (r := http.get("/readyz")).status_code == 200 and r, 20, "ready")
        assert ready.json() == {"status": "ready", "database": "ok", "broker": "ok"}
        for _ in range(3):
            assert http.get(f"/v1/messages/{token[:26].upper()}").status_code == 401
        metrics = http.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    # Requests by route template and status: never the id itself.
    counted = re.search(
        r'^moat_api_requests_total\{method="GET",route="/v1/messages/\{message_id\}",'
        r'status="401"\} (\d+)\.0$',
        text,
        re.MULTILINE,
    )
    assert counted is not None and int(counted.group(1)) >= 3
    assert token[:26].upper() not in text
    assert (
        'moat_api_request_duration_seconds_bucket{le="0.1",method="GET",route="/healthz"}' in text
    )
    delivered = re.search(r'^moat_messages\{status="delivered"\} (\d+)\.0$', text, re.MULTILINE)
    assert delivered is not None
    assert int(delivered.group(1)) == gateway.statuses().get("delivered", 0)


def test_bodies_over_the_limit_are_refused_before_they_are_read(gateway: Gateway) -> None:
    host, port = gateway.config["api"]["listen"].rsplit(":", 1)
    context = ssl.create_default_context(cafile=gateway.workdir / "tls" / "api-cert.pem")

    def raw(head: str, body: bytes) -> bytes:
        """Send a request's head and only the start of its body, then read the answer: it
        comes although the body never does."""
        with (
            socket.create_connection((host, int(port)), timeout=10) as plain,
            context.wrap_socket(plain, server_hostname=host) as tls,
        ):
            tls.sendall(head.encode() + body)
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                answer += chunk
            return answer

    auth = f"Authorization: Bearer {gateway.token}\r\n"
    declared = raw(
        f"POST /v1/senders HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n"
        "Content-Length: 104857600\r\n\r\n",
        b'{"action": "block", ',
    )
    assert declared.startswith(b"HTTP/1.1 413 "), declared[:200]
    assert b"content-type: application/problem+json" in declared.lower()
    chunk = b"x" * 65536
    streamed = raw(
        f"POST /v1/senders HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n",
        (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * 17,  # 1.06 MiB, no last chunk
    )
    assert streamed.startswith(b"HTTP/1.1 413 "), streamed[:200]

    with gateway.http() as http:  # under the limit: read and judged as usual
        padded = {"action": "block", "sender": "x@spam.test", "note": "n" * 400}
        assert http.post("/v1/senders", json=padded).status_code == 201
        big = http.post("/v1/senders", content=b" " * (1024 * 1024 + 1))
        assert big.status_code == 413 and big.json()["status"] == 413


def test_the_access_log_has_a_line_per_request_and_no_secret(gateway: Gateway, token: str) -> None:
    secrets = [f"link-{token}", f"ui-{token}", f"key-{token}", f"oneclick-{token}"]
    with gateway.http() as http:
        http.get(f"/ui/link/{secrets[3]}")  # a digest's one-click link: the token is the path
        http.get(f"/links/release/abc?token={secrets[0]}&x=1")
        http.get(f"/ui/?t={secrets[1]}")
        http.get(f"/healthz?api_key={secrets[2]}&probe={token}")
        http.get(f"/healthz?probe={token}-plain")
    lines = wait_for(
        lambda: [line for line in gateway.log("api").splitlines() if f"{token}-plain" in line],
        10,
        "the access log line",
    )
    assert len(lines) == 1 and '"GET /healthz?probe=' in lines[0] and " 200" in lines[0]
    log = gateway.log("api")
    for secret in [*secrets, gateway.token]:
        assert secret not in log
    assert '"GET /links/release/abc?[redacted] HTTP/1.1" 404' in log
    assert '"GET /ui/link/[redacted] HTTP/1.1"' in log
    assert f"/healthz?api_key=[redacted]&probe={token} HTTP/1.1" in log


def test_database_and_broker_outages_answer_503_never_500(
    make_gateway: Callable[..., Gateway],
) -> None:
    """A PostgreSQL database dropped under a running API (its connections are cut, and new
    ones find no database), and a broker cut off by a proxy: each answered as an outage."""
    proxy = TcpProxy(5672)
    try:
        gw = make_gateway("postgresql", start=False, broker_port=proxy.port)
        gw.start("api")
        user = issue(gw, recipient="bob@example.test")
        with gw.http() as http:
            wait_for(lambda: http.get("/readyz").status_code == 200, 20, "ready")
            proxy.down()
            not_ready = wait_for(
                lambda: (r := http.get("/readyz")).status_code == 503 and r, 20, "not ready"
            )
            assert not_ready.json()["detail"] == "not ready: broker unreachable"
            assert not_ready.headers["retry-after"]
            stats = http.get("/v1/stats")
            assert stats.status_code == 200
            assert stats.json()["broker"]["reachable"] is False
            proxy.up()
            wait_for(lambda: http.get("/readyz").status_code == 200, 30, "ready again")

        name = gw.config["database_url"].rsplit("/", 1)[1]
        asyncio.run(_drop(name))
        with gw.http() as http:
            answers = {
                "message": http.get("/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV"),
                "stats": http.get("/v1/stats"),
                "audit": http.get("/v1/audit"),
                "rule": http.post("/v1/senders", json={"action": "block", "sender": "a.test"}),
                "tokens": http.get("/v1/tokens"),
            }
            with as_token(gw, user) as scoped:  # its token cannot even be checked
                answers["scoped"] = scoped.get("/v1/senders")
            for what, response in answers.items():
                assert response.status_code == 503, (what, response.text)
                assert response.headers["content-type"] == PROBLEM, what
                assert response.headers["retry-after"] == "30", what
                assert response.json()["detail"] == "the database is unreachable; try again later"
            not_ready = http.get("/readyz")
            assert not_ready.status_code == 503
            assert not_ready.json()["detail"] == "not ready: database unreachable"
            assert http.get("/healthz").status_code == 200  # the process itself is fine
            assert http.get("/metrics").status_code == 200
        assert "Traceback" not in gw.log("api")
    finally:
        proxy.close()


async def _drop(name: str) -> None:
    import asyncpg

    admin = POSTGRES_ADMIN_URL.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await conn.close()
