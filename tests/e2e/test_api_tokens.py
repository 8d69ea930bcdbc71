"""API tokens over real HTTPS: admins issue, list and revoke them; a scoped token sees only
its own mail (another's answers 404, like an unknown id); a reader reads and cannot act."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.harness import Gateway

pytestmark = pytest.mark.e2e


def _issue(gateway: Gateway, **body: Any) -> dict[str, Any]:
    with gateway.http() as http:
        response = http.post("/v1/tokens", json={"name": "test", **body})
    assert response.status_code == 201, response.text
    issued: dict[str, Any] = response.json()
    return issued


def _as(gateway: Gateway, secret: str) -> httpx.Client:
    client = gateway.http()
    client.headers["Authorization"] = f"Bearer {secret}"
    return client


def test_scoped_tokens_see_only_their_own_mail(gateway: Gateway, token: str) -> None:
    bob, carol = f"bob-{token}@example.test", f"carol-{token}@example.test"
    dave = f"dave-{token}@other.example.test"
    to_bob = gateway.send("alice@outside.test", [bob], f"for bob {token}")
    to_carol = gateway.send("alice@outside.test", [carol], f"for carol {token}")
    to_dave = gateway.send("alice@outside.test", [dave], f"for dave {token}")
    for message_id in (to_bob, to_carol, to_dave):
        gateway.wait_status(message_id, "delivered")

    user = _issue(gateway, recipient=bob.upper())  # addresses compare without case
    domain = _issue(gateway, domain="other.example.test")
    reader = _issue(gateway, role="reader")
    assert (user["role"], user["scope"]) == ("user", bob)
    assert user["token"].startswith("moat_")

    unknown = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    with _as(gateway, user["token"]) as http:
        assert http.get(f"/v1/messages/{to_bob}").status_code == 200
        hidden = http.get(f"/v1/messages/{to_carol}")
        missing = http.get(f"/v1/messages/{unknown}")
        assert hidden.status_code == missing.status_code == 404
        # Not even the wording tells an existing message from an unknown one.
        assert hidden.json()["detail"].replace(to_carol, "X") == missing.json()["detail"].replace(
            unknown, "X"
        )
        assert http.get("/v1/tokens").status_code == 403
        assert http.post("/v1/tokens", json={"name": "x", "role": "admin"}).status_code == 403
        assert http.post(f"/v1/messages/{to_bob}/retry").status_code == 403
    with _as(gateway, domain["token"]) as http:
        assert http.get(f"/v1/messages/{to_dave}").status_code == 200
        assert http.get(f"/v1/messages/{to_bob}").status_code == 404
    with _as(gateway, reader["token"]) as http:
        for message_id in (to_bob, to_carol, to_dave):
            assert http.get(f"/v1/messages/{message_id}").status_code == 200
        listed = http.get("/v1/tokens")
        assert listed.status_code == 200
        assert all("token" not in t for t in listed.json()["tokens"])  # the secret never again
        forbidden = http.post(f"/v1/messages/{to_bob}/retry")
        assert forbidden.status_code == 403
        assert forbidden.headers["content-type"] == "application/problem+json"
        assert http.delete(f"/v1/tokens/{user['id']}").status_code == 403


def test_revoked_expired_and_made_up_tokens_are_refused(gateway: Gateway, token: str) -> None:
    user = _issue(gateway, recipient=f"erin-{token}@example.test")
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    expired = _issue(gateway, recipient=f"erin-{token}@example.test", expires_at=past)
    with _as(gateway, user["token"]) as http:
        assert http.get("/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV").status_code == 404  # valid
    with gateway.http() as http:
        revoked = http.delete(f"/v1/tokens/{user['id']}")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        assert http.delete(f"/v1/tokens/{user['id']}").status_code == 200  # twice: harmless
        assert http.delete("/v1/tokens/nosuchtoken").status_code == 404
    for secret in (user["token"], expired["token"], "moat_made-up", "not even the shape"):
        with _as(gateway, secret) as http:
            refused = http.get("/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV")
        assert refused.status_code == 401, secret
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "body",
    [
        {"name": "two kinds", "recipient": "bob@example.test", "role": "admin"},
        {"name": "none"},
        {"name": "elsewhere", "recipient": "bob@elsewhere.test"},
        {"name": "not ours", "domain": "elsewhere.test"},
        {"name": "not an address", "recipient": "bob"},
        {"name": "bad role", "role": "root"},
        {"name": "", "role": "reader"},
    ],
)
def test_token_requests_that_make_no_sense_get_422(gateway: Gateway, body: dict[str, Any]) -> None:
    with gateway.http() as http:
        response = http.post("/v1/tokens", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
