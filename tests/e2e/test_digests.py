"""Quarantine digests over real HTTPS and SMTP: one digest per recipient however often the job
runs, and one-click links that act once, after a confirmation, for the right recipient only."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import select

from moat.db import create_engine, sender_rules
from services.api.links import Action, Links
from tests.harness import ROOT, Gateway, Sink, wait_for
from tests.support.people import (
    WebClient,
    digests_to,
    hold_spam,
    links_in,
    page_text,
    path_of,
    text_of,
    wait_digest,
)

pytestmark = pytest.mark.e2e

EICAR = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def _send_digests(gateway: Gateway) -> dict[str, Any]:
    with gateway.http() as http:
        response = http.post("/v1/digests/send")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _mint(gateway: Gateway, action: Action, message_id: str, recipient: str, ttl: float) -> str:
    """A link signed with the gateway's own key (the test knows it: it wrote the settings)."""
    links = Links(
        gateway.config["api"]["signing_key"].encode(),
        create_engine(gateway.config["database_url"]),
        gateway.api_url,
    )
    return path_of(links.url(links.make(action, message_id, recipient, ttl)))


def _confirm(web: WebClient, path: str) -> Any:
    """Open a link's page, then press its button."""
    page = web.get(path)
    assert page.status_code == 200, page.text
    return web.post(path)


def test_digest_links_act_once_after_a_confirmation(
    gateway: Gateway, relay_sink: Sink, token: str
) -> None:
    bob, carol = f"bob-{token}@example.test", f"carol-{token}@example.test"
    spam_a = hold_spam(gateway, [bob], f"spam a {token}", sender=f"a-{token}@outside.test")
    spam_b = hold_spam(gateway, [bob], f"spam b {token}")
    virus = gateway.send("worm@outside.test", [bob], EICAR, subject=f"virus {token}")
    gateway.wait_status(virus, "quarantined")
    to_carol = hold_spam(gateway, [carol], f"for carol {token}")

    sent = _send_digests(gateway)
    assert sent["digests"] >= 2 and sent["entries"] >= 4
    (digest,) = wait_digest(relay_sink, bob)
    assert digest["Auto-Submitted"] == "auto-generated"
    assert digest.get_content_type() == "multipart/alternative"
    text = text_of(digest)
    for subject in (f"spam a {token}", f"spam b {token}", f"virus {token}"):
        assert subject in text and subject in text_of(digest, "html")
    assert f"for carol {token}" not in text
    links = links_in(digest)
    # Spam can be released by its recipient; the virus only by an administrator: no link.
    assert len(links["release"]) == 2 and len(links["delete"]) == 3
    assert len(links["block"]) == 3 and len(links["signin"]) == 1
    newest_first = [line for line in text.splitlines() if token in line and ". " in line]
    assert [line.split(". ", 1)[1] for line in newest_first] == [
        f"virus {token}",
        f"spam b {token}",
        f"spam a {token}",
    ]
    release_a = path_of(links["release"][1])
    release_b = path_of(links["release"][0])
    delete_b = path_of(links["delete"][1])

    with WebClient(gateway) as web:
        # Following the link only asks: a mail scanner's prefetch releases nothing.
        page = web.get(release_a)
        assert page.status_code == 200 and f"spam a {token}" in page_text(page)
        assert "Release this message?" in page.text
        assert gateway.message(spam_a)["status"] == "quarantined"
        done = web.post(release_a)
        assert done.status_code == 200 and "Released" in done.text, done.text
        # Used once: refused, on the page and on the button, and nothing happens twice.
        for again in (web.get(release_a), web.post(release_a)):
            assert again.status_code == 409
            assert "used already" in again.text and "Nothing was done" in again.text

        assert _confirm(web, delete_b).status_code == 200
        assert gateway.message(spam_b)["status"] == "deleted"
        # The release link of a message deleted meanwhile does nothing.
        late = _confirm(web, release_b)
        assert late.status_code == 409 and "Nothing was done" in late.text

    def released() -> list[Any]:  # the digests carry the subjects too: not them
        return [m for m in relay_sink.with_token(token) if b"X-Moat-Released" in m.data]

    wait_for(released, 30, "the released message")
    gateway.wait_status(spam_a, "delivered")
    (arrived,) = released()
    assert f"spam a {token}".encode() in arrived.data
    assert gateway.message(virus)["status"] == "quarantined"
    assert gateway.message(to_carol)["status"] == "quarantined"


def test_tampered_expired_and_wrong_recipient_links_are_refused(
    gateway: Gateway, relay_sink: Sink, token: str
) -> None:
    dora, eve = f"dora-{token}@example.test", f"eve-{token}@example.test"
    held = hold_spam(gateway, [dora], f"held {token}")
    virus = gateway.send("worm@outside.test", [dora], EICAR, subject=f"virus {token}")
    gateway.wait_status(virus, "quarantined")
    _send_digests(gateway)
    (digest,) = wait_digest(relay_sink, dora)
    release = path_of(links_in(digest)["release"][0])

    payload, mac = release.removeprefix("/ui/link/").split(".")
    other = "A" if payload[10] != "A" else "B"
    refused_paths = {
        # One character of the signed value changed, the MAC cut short, or no MAC at all.
        "tampered": f"/ui/link/{payload[:10]}{other}{payload[11:]}.{mac}",
        "cut": f"/ui/link/{payload}.{mac[:-4]}",
        "unsigned": f"/ui/link/{payload}",
        # Properly signed, but expired; for a recipient the message is not for; a release
        # of a virus for its recipient (only an administrator may).
        "expired": _mint(gateway, Action.RELEASE, held, dora, ttl=-60),
        "wrong recipient": _mint(gateway, Action.RELEASE, held, eve, ttl=600),
        "unknown message": _mint(gateway, Action.DELETE, "01ARZ3NDEKTSV4RRFFQ69G5FAV", dora, 600),
        "virus": _mint(gateway, Action.RELEASE, virus, dora, ttl=600),
    }
    expected = {
        "tampered": (400, "not valid"),
        "cut": (400, "not valid"),
        "unsigned": (400, "not valid"),
        "expired": (410, "expired"),
        "wrong recipient": (404, "not for a message held for its recipient"),
        "unknown message": (404, "not for a message held for its recipient"),
        "virus": (403, "released by an administrator"),
    }
    with WebClient(gateway) as web:
        web.get("/ui/signin")  # a CSRF cookie and field, as a browser would have
        for name, path in refused_paths.items():
            status, words = expected[name]
            for response in (web.get(path), web.post(path)):
                assert response.status_code == status, (name, response.text)
                assert words in response.text, name
                assert "Nothing was done" in response.text, name
        # A genuine link still works after all that, and the virus is still held.
        assert "Released" in _confirm(web, release).text
    gateway.wait_status(held, {"released", "delivered"})
    assert gateway.message(virus)["status"] == "quarantined"


def test_block_and_sign_in_links(gateway: Gateway, relay_sink: Sink, token: str) -> None:
    fay = f"fay-{token}@example.test"
    sender = f"pest-{token}@outside.test"
    held = hold_spam(gateway, [fay], f"pest {token}", sender=sender)
    _send_digests(gateway)
    (digest,) = wait_digest(relay_sink, fay)
    links = links_in(digest)
    with WebClient(gateway) as web:
        page = web.get(path_of(links["block"][0]))
        assert f"Block {sender}" in page.text
        assert web.post(path_of(links["block"][0])).status_code == 200
        signed_in = _confirm(web, path_of(links["signin"][0]))
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/ui/"
        listed = web.get("/ui/")
        assert listed.status_code == 200 and held in listed.text and fay in listed.text
        # The sign-in link, too, works once.
        assert web.post(path_of(links["signin"][0])).status_code == 409

    async def rules() -> list[Any]:
        engine = create_engine(gateway.config["database_url"])
        try:
            async with engine.connect() as conn:
                return list(await conn.execute(select(sender_rules)))
        finally:
            await engine.dispose()

    (rule,) = [r for r in asyncio.run(rules()) if r.sender == sender]
    assert (rule.action, rule.scope_kind, rule.scope) == ("block", "recipient", fay)
    assert rule.created_by == "digest link"


def test_one_digest_per_recipient_however_often_the_job_runs(
    gateway: Gateway, relay_sink: Sink, token: str
) -> None:
    ivy, jon = f"ivy-{token}@example.test", f"jon-{token}@example.test"
    hold_spam(gateway, [ivy], f"one {token}")
    hold_spam(gateway, [ivy, jon], f"two {token}")
    hold_spam(gateway, [jon], f"three {token}")

    with ThreadPoolExecutor(4) as pool:  # four runs at once, then one more
        runs = list(pool.map(lambda _: _send_digests(gateway), range(4)))
    runs.append(_send_digests(gateway))
    notices = [notice for run in runs for notice in run["notice_ids"]]
    to = Counter(gateway.message(n)["recipients"][0]["address"] for n in notices)
    assert to[ivy] == 1 and to[jon] == 1, to
    for notice in notices:
        gateway.wait_status(notice, "delivered")
    # Every digest any run recorded is delivered: no other can come any more.
    (ivy_digest,) = digests_to(relay_sink, ivy)
    (jon_digest,) = digests_to(relay_sink, jon)
    assert f"one {token}" in text_of(ivy_digest) and f"two {token}" in text_of(ivy_digest)
    assert f"two {token}" in text_of(jon_digest) and f"three {token}" in text_of(jon_digest)

    # New held mail later: the next digest tells of it alone.
    hold_spam(gateway, [ivy], f"four {token}")
    _send_digests(gateway)
    first, second = wait_digest(relay_sink, ivy, 2)
    assert f"four {token}" in text_of(second)
    assert f"one {token}" not in text_of(second) and f"two {token}" not in text_of(second)


def test_the_periodic_job_sends_digests_by_itself(
    make_gateway: Callable[..., Gateway], relay_sink: Sink, token: str
) -> None:
    gateway = make_gateway("sqlite", digest={"interval": 1})
    kim, lee = f"kim-{token}@example.test", f"lee-{token}@example.test"
    hold_spam(gateway, [kim], f"kim {token}")
    wait_digest(relay_sink, kim)
    hold_spam(gateway, [lee], f"lee {token}")
    wait_digest(relay_sink, lee)  # later runs happened...
    assert len(digests_to(relay_sink, kim)) == 1  # ...and told kim nothing twice


def test_outside_dev_the_api_does_not_start_without_a_signing_key(
    make_gateway: Callable[..., Gateway],
) -> None:
    gateway = make_gateway("sqlite", start=False, api={"signing_key": None})
    process = subprocess.run(
        [sys.executable, "-m", "services.api"],
        cwd=ROOT,
        env=gateway.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 78, process.stderr
    assert "api.signing_key is not set (env=test)" in process.stderr + process.stdout
    assert "Traceback" not in process.stderr
