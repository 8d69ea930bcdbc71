"""The API's signing key and what it signs: one-click links, web sessions and CSRF tokens.

One secret (``api.signing_key``) with a key derived per purpose (HMAC-SHA256 of the purpose
name), so a signature made for one purpose is never accepted for another: a session cookie is
no link, a link is no CSRF token. Outside ``dev`` the key must be configured; in ``dev`` one is
generated once into ``api.signing_key_file`` (like the self-signed certificate), so links keep
working across restarts and every replica of one machine agrees.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from moat.settings import Settings

log = logging.getLogger("api")


class SigningKeyMissing(RuntimeError):
    """Outside dev the API does not start without a configured signing key."""


class BadSignature(Exception):
    """A signed value was changed, cut short or signed for another purpose."""


def load_signing_key(settings: Settings) -> bytes:
    configured = settings.api.signing_key
    if configured is not None:
        return configured.get_secret_value().encode()
    if settings.env != "dev":
        raise SigningKeyMissing(
            f"api.signing_key is not set (env={settings.env}): set MOAT_API__SIGNING_KEY to a "
            "secret of at least 32 characters, e.g. the output of `openssl rand -hex 32`; it "
            "signs one-click links and web sessions"
        )
    return _generated(settings.api.signing_key_file)


def _generated(path: Path) -> bytes:
    """The key in ``path``, made on first use. Made aside and linked into place, so two
    processes starting at once both end up with the one that won."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(f".{path.name}.{os.getpid()}")
        aside.write_text(secrets.token_hex(32))
        aside.chmod(0o600)
        try:
            os.link(aside, path)
            log.warning("generated a signing key for links and sessions: %s (dev only)", path)
        except FileExistsError:
            pass
        finally:
            aside.unlink()
    return path.read_text().strip().encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise BadSignature("not base64") from None


class Signer:
    """Signs and checks small JSON values for one purpose: ``<payload>.<mac>``, both base64url."""

    def __init__(self, key: bytes, purpose: str) -> None:
        self._key = hmac.new(key, purpose.encode(), hashlib.sha256).digest()

    def mac(self, data: bytes) -> bytes:
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def sign(self, value: dict[str, Any], *, bound_to: bytes = b"") -> str:
        """``bound_to``: a secret that must still be the same when the value is checked (it is
        part of the MAC, not of the value)."""
        payload = _b64(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())
        return f"{payload}.{_b64(self.mac(payload.encode() + bound_to))}"

    def verify(self, signed: str, *, bound_to: bytes = b"") -> dict[str, Any]:
        payload, dot, mac = signed.partition(".")
        if not dot or len(signed) > 4096:
            raise BadSignature("not a signed value")
        if not hmac.compare_digest(_unb64(mac), self.mac(payload.encode() + bound_to)):
            raise BadSignature("the signature does not match")
        try:
            value = json.loads(_unb64(payload))
        except ValueError:
            raise BadSignature("not JSON") from None
        if not isinstance(value, dict):
            raise BadSignature("not an object")
        return value

    def token(self, seed: str) -> str:
        """A MAC of ``seed`` as text (e.g. a CSRF token for the browser holding ``seed``)."""
        return _b64(self.mac(seed.encode()))

    def token_matches(self, seed: str, given: str) -> bool:
        return hmac.compare_digest(self.token(seed).encode(), given.encode())
