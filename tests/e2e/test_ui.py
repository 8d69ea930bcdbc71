"""The quarantine web page over real HTTPS: sign-in, the session cookie, CSRF, scope, the safe
preview, actions, and the security headers of every page."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from moat.db import create_engine, sender_rules
from tests.harness import Gateway, Sink, wait_for
from tests.support.people import WebClient, hold_spam, issue, page_text

pytestmark = pytest.mark.e2e


def _rules(gateway: Gateway) -> list[tuple[str, str, str, str]]:
    async def read() -> list[tuple[str, str, str, str]]:
        engine = create_engine(gateway.config["database_url"])
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    select(
                        sender_rules.c.action,
                        sender_rules.c.sender,
                        sender_rules.c.scope_kind,
                        sender_rules.c.scope,
                    )
                )
                return [tuple(row) for row in rows]  # type: ignore[misc]
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_a_user_signs_in_sees_only_their_mail_and_releases_it(
    gateway: Gateway, relay_sink: Sink, token: str
) -> None:
    bob, carol = f"bob-{token}@example.test", f"carol-{token}@example.test"
    for_bob = hold_spam(gateway, [bob], f"for bob {token}")
    for_carol = hold_spam(gateway, [carol], f"for carol {token}")
    user = issue(gateway, recipient=bob)

    with WebClient(gateway) as web:
        assert web.get("/ui/").headers["location"] == "/ui/signin"  # not signed in yet
        signed_in = web.sign_in(user["token"])
        cookie = signed_in.headers["set-cookie"]
        assert cookie.startswith("__Host-moat_session=")
        assert {"httponly", "secure", "samesite=strict", "path=/"} <= {
            part.strip().lower() for part in cookie.split(";")
        }
        assert user["token"] not in cookie  # the cookie holds no secret of the token

        listed = web.get("/ui/")
        assert listed.status_code == 200
        assert f"for bob {token}" in listed.text and for_bob in listed.text
        assert for_carol not in listed.text and f"for carol {token}" not in listed.text
        # Another user's message answers like an unknown one.
        hidden = web.get(f"/ui/messages/{for_carol}")
        assert hidden.status_code == 404
        assert f"for carol {token}" not in hidden.text

        page = web.get(f"/ui/messages/{for_bob}")
        assert page.status_code == 200 and "GTUBE" in page.text
        released = web.post(f"/ui/messages/{for_bob}/release")
        assert released.status_code == 303
        assert released.headers["location"] == f"/ui/messages/{for_bob}?done=released"
        again = web.post(f"/ui/messages/{for_bob}/release")  # a second click delivers nothing
        assert again.status_code == 409 and "Nothing was done" in page_text(again)

    wait_for(lambda: relay_sink.with_token(f"for bob {token}"), 30, "the released message")
    gateway.wait_status(for_bob, "delivered")
    arrived = relay_sink.with_token(f"for bob {token}")
    assert len(arrived) == 1 and b"X-Moat-Released:" in arrived[0].data
    assert gateway.message(for_carol)["status"] == "quarantined"


def test_every_page_carries_the_security_headers(gateway: Gateway, token: str) -> None:
    user = issue(gateway, recipient=f"dan-{token}@example.test")
    with WebClient(gateway) as web:
        pages = [web.get("/ui/signin"), web.get("/ui/nowhere"), web.get("/ui/link/forged")]
        web.sign_in(user["token"])
        pages += [web.get("/ui/"), web.get("/ui/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV")]
    for page in pages:
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "script-src" not in csp  # no script source at all: default-src 'none' rules
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["content-type"].startswith("text/html")
        assert "<script" not in page.text.lower()


def test_forms_without_the_csrf_token_do_nothing(gateway: Gateway, token: str) -> None:
    erin = f"erin-{token}@example.test"
    held = hold_spam(gateway, [erin], f"csrf {token}")
    user = issue(gateway, recipient=erin)
    with WebClient(gateway) as web:
        web.sign_in(user["token"])
        web.get(f"/ui/messages/{held}")
        forged = web.http.post(f"/ui/messages/{held}/release", data={"csrf": "made-up"})
        missing = web.http.post(f"/ui/messages/{held}/delete", data={"confirm": "yes"})
        as_json = web.http.post(f"/ui/messages/{held}/release", json={"csrf": web.csrf})
    assert forged.status_code == missing.status_code == 403
    assert as_json.status_code == 415
    assert gateway.message(held)["status"] == "quarantined"


def test_signing_out_or_revoking_the_token_ends_the_session(gateway: Gateway, token: str) -> None:
    frank = f"frank-{token}@example.test"
    user = issue(gateway, recipient=frank)
    other = issue(gateway, recipient=frank)
    with WebClient(gateway) as web:
        web.sign_in(user["token"])
        copied = dict(web.http.cookies)
        assert web.get("/ui/").status_code == 200
        signed_out = web.post("/ui/signout")
        assert signed_out.status_code == 303 and signed_out.headers["location"] == "/ui/signin"
    with WebClient(gateway) as replay:  # the cookie copied before signing out: worth nothing
        for name, value in copied.items():
            replay.http.cookies.set(name, value)
        assert replay.get("/ui/").headers["location"] == "/ui/signin"

    with WebClient(gateway) as web:
        web.sign_in(other["token"])
        assert web.get("/ui/").status_code == 200
        with gateway.http() as admin:
            assert admin.delete(f"/v1/tokens/{other['id']}").status_code == 200
        assert web.get("/ui/").headers["location"] == "/ui/signin"

    with WebClient(gateway) as web:
        web.get("/ui/signin")
        refused = web.post("/ui/signin", {"token": "moat_not-a-token"})
        assert refused.status_code == 401 and "not valid" in refused.text
        assert "set-cookie" not in refused.headers or "moat_session" not in str(refused.headers)


def test_the_preview_is_text_and_nothing_in_it_runs(gateway: Gateway, token: str) -> None:
    gina = f"gina-{token}@example.test"
    body = (
        "<html><body><script>alert('x')</script>"
        '<p>Click <a href="https://evil.test/login">here</a></p>'
        '<img src="https://tracker.test/p.gif" alt="pixel"></body></html>'
    )
    message_id = gateway.send(
        "spammer@outside.test",
        [gina],
        f"{body}\n<p>XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X</p>",
        subject=f"<b>html {token}</b>",
        extra_headers={"Content-Type": "text/html; charset=utf-8"},
    )
    gateway.wait_status(message_id, "quarantined")
    admin_view = WebClient(gateway)
    with admin_view as web:
        web.sign_in(gateway.token)  # the bootstrap admin token signs in too
        listed = web.get("/ui/")
        assert message_id in listed.text  # admins see everyone's
        page = web.get(f"/ui/messages/{message_id}")
    assert page.status_code == 200
    assert "<script>" not in page.text and "alert(" not in page.text.split("<pre")[0]
    assert '<a href="https://evil.test' not in page.text  # the link is text, not a link
    assert "https://evil.test/login" in page.text
    assert "<img" not in page.text and "tracker.test" not in page.text.split("<pre")[0]
    assert f"&lt;b&gt;html {token}&lt;/b&gt;" in page.text  # the subject escaped


def test_block_and_allow_the_sender_from_a_message(gateway: Gateway, token: str) -> None:
    hank = f"hank-{token}@example.test"
    sender = f"pest-{token}@outside.test"
    held = hold_spam(gateway, [hank], f"block {token}", sender=sender)
    user = issue(gateway, recipient=hank)
    reader = issue(gateway, role="reader")
    with WebClient(gateway) as web:
        web.sign_in(user["token"])
        web.get(f"/ui/messages/{held}")
        blocked = web.post(f"/ui/messages/{held}/block")
        assert blocked.status_code == 303, blocked.text
        assert web.get(blocked.headers["location"]).text.count("The sender is blocked") == 1
        assert ("block", sender, "recipient", hank) in _rules(gateway)
        web.post(f"/ui/messages/{held}/allow")
    rules = [r for r in _rules(gateway) if r[1] == sender]
    assert rules == [("allow", sender, "recipient", hank)]  # turned over, not a second rule
    with WebClient(gateway) as web:
        web.sign_in(reader["token"])
        page = web.get(f"/ui/messages/{held}")
        assert page.status_code == 200 and "/block" not in page.text  # a reader gets no buttons
        refused = web.post(f"/ui/messages/{held}/release")
        assert refused.status_code == 403
    assert gateway.message(held)["status"] == "quarantined"
