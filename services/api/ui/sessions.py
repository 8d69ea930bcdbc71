"""Web page sessions and CSRF tokens.

The session cookie holds a signed value (the ``session`` purpose of the signing key): what
kind of sign-in it is, the token's *id* (never its secret), or the recipient of a sign-in link,
a random nonce and an expiry. Each request checks it again: a revoked or expired token ends
its sessions at once, a session signed out (its nonce recorded in ``used_links``) stays out
even if its cookie was copied, and a change of the bootstrap ``admin_token`` ends the sessions
signed in with the old one (they carry a MAC of it, not the token).

CSRF: every form carries a MAC (``csrf`` purpose) of a random value in a second cookie; a POST
whose field does not match that cookie's MAC is refused. Both cookies are ``__Host-``,
``Secure``, ``HttpOnly`` and ``SameSite=Strict``.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from services.api.auth import BOOTSTRAP_ADMIN, Principal, Role, TokenStore
from services.api.links import Links
from services.api.signing import BadSignature, Signer

SESSION_COOKIE = "__Host-moat_session"
CSRF_COOKIE = "__Host-moat_csrf"


@dataclass(frozen=True)
class Session:
    principal: Principal
    nonce: str
    label: str  # who is signed in, as the page shows it


def link_principal(address: str) -> Principal:
    """Whoever followed a sign-in link for ``address``: that recipient, as a user token."""
    return Principal(Role.USER, f"sign-in link ({address})", None, address.lower())


class Sessions:
    def __init__(
        self, key: bytes, tokens: TokenStore, links: Links, admin_token: str, ttl: float
    ) -> None:
        self._signer = Signer(key, "session")
        self._csrf = Signer(key, "csrf")
        self._admin = self._signer.token(admin_token)
        self.tokens = tokens
        self.links = links
        self.ttl = ttl

    def issue(self, principal: Principal) -> str:
        """The cookie value of a new session for ``principal``."""
        if principal.token_id is not None:
            kind, detail = "token", principal.token_id
        elif principal.is_admin:
            kind, detail = "admin", self._admin
        else:
            kind, detail = "link", principal.scope or ""
        return self._signer.sign(
            {
                "k": kind,
                "d": detail,
                "n": secrets.token_hex(16),
                "e": int(time.time() + self.ttl),
            }
        )

    async def current(self, cookie: str | None) -> Session | None:
        """The session a cookie stands for, if it is still good."""
        if not cookie:
            return None
        try:
            value = self._signer.verify(cookie)
            kind, detail, nonce, expires = (
                str(value["k"]),
                str(value["d"]),
                str(value["n"]),
                int(value["e"]),
            )
        except (BadSignature, KeyError, ValueError, TypeError):
            return None
        if expires <= time.time() or await self.links.used_at(nonce) is not None:
            return None
        principal: Principal | None = None
        if kind == "token":
            principal = await self.tokens.principal(detail)
        elif kind == "admin" and secrets.compare_digest(detail, self._admin):
            principal = BOOTSTRAP_ADMIN
        elif kind == "link" and detail:
            principal = link_principal(detail)
        if principal is None:
            return None
        return Session(principal, nonce, _label(principal))

    async def end(self, session: Session) -> None:
        """Sign out: the nonce is spent, so the same cookie never works again."""
        await self.links.spend(session.nonce, "signout")

    def csrf_token(self, seed: str) -> str:
        return self._csrf.token(seed)

    def csrf_ok(self, seed: str | None, given: str | None) -> bool:
        return bool(seed) and bool(given) and self._csrf.token_matches(seed or "", given or "")


def _label(principal: Principal) -> str:
    if principal.token_id is None and principal.is_admin:
        return "administrator"
    if principal.scope:
        return principal.scope
    return f"{principal.name} ({principal.role})"
