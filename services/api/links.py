"""One-click links: signed, expiring, single-use capabilities that act for one recipient
without a sign-in (the entries of a quarantine digest, and its sign-in link).

A link's value binds the action, the message, the recipient and the expiry, plus a random
nonce; its MAC (HMAC-SHA256 under the ``links`` purpose of the signing key) covers all of
them, so changing any part refuses the link. A link is used by a POST (the GET shows what it
would do), which first records the nonce in ``used_links``: the primary key lets exactly one
use through, however many arrive at once.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from moat.db import READ_ONLY, db_now, used_links
from services.api.signing import BadSignature, Signer


class Action(StrEnum):
    RELEASE = "release"
    DELETE = "delete"
    BLOCK = "block"  # block the message's sender for this recipient
    SIGNIN = "signin"  # a web page session for this recipient; no message


@dataclass(frozen=True)
class Link:
    action: Action
    message_id: str  # "" for a sign-in link
    recipient: str
    expires: int  # Unix time
    nonce: str


class Refusal(StrEnum):
    """Why a link does nothing; each has its own page."""

    INVALID = "invalid"  # changed, cut short, or not a link at all
    EXPIRED = "expired"
    USED = "used"


class LinkRefused(Exception):
    def __init__(self, why: Refusal, link: Link | None = None) -> None:
        super().__init__(why)
        self.why = why
        self.link = link


class Links:
    def __init__(self, key: bytes, engine: AsyncEngine, base_url: str) -> None:
        self._signer = Signer(key, "links")
        self.engine = engine
        self.reader = engine.execution_options(**{READ_ONLY: True})
        self.base_url = base_url.rstrip("/")

    def make(self, action: Action, message_id: str, recipient: str, ttl: float) -> str:
        """The link's token (what goes after ``/ui/link/``)."""
        value = {
            "a": str(action),
            "m": message_id,
            "r": recipient.lower(),
            "e": int(time.time() + ttl),
            "n": secrets.token_hex(16),
        }
        return self._signer.sign(value)

    def url(self, token: str) -> str:
        return f"{self.base_url}/ui/link/{token}"

    def read(self, token: str) -> Link:
        """The link a token stands for, checked for signature and expiry (not yet for use)."""
        try:
            value = self._signer.verify(token)
            link = Link(
                Action(value["a"]),
                str(value["m"]),
                str(value["r"]),
                int(value["e"]),
                str(value["n"]),
            )
        except (BadSignature, KeyError, ValueError, TypeError):
            raise LinkRefused(Refusal.INVALID) from None
        if len(link.nonce) != 32:
            raise LinkRefused(Refusal.INVALID)
        if link.expires <= time.time():
            raise LinkRefused(Refusal.EXPIRED, link)
        return link

    async def used_at(self, nonce: str) -> datetime | None:
        """When the link (or session) with this nonce was used; None if it was not."""
        async with self.reader.connect() as conn:
            used: datetime | None = (
                await conn.execute(select(used_links.c.used_at).where(used_links.c.nonce == nonce))
            ).scalar()
        return used

    async def use(self, link: Link) -> None:
        """Spend the link; ``LinkRefused(USED)`` if it was spent before (or a moment ago)."""
        if not await self.spend(link.nonce, str(link.action), link.message_id):
            raise LinkRefused(Refusal.USED, link)

    async def spend(self, nonce: str, action: str, message_id: str = "") -> bool:
        """Record a nonce as used; False if it was already (the primary key decides a race)."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(used_links).values(
                        nonce=nonce, used_at=db_now(), action=action, message_id=message_id
                    )
                )
        except IntegrityError:
            return False
        return True

    async def give_back(self, link: Link) -> None:
        """Un-spend a link whose action failed for a reason of ours (not a refusal)."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(used_links).where(used_links.c.nonce == link.nonce))

    async def prune(self, older_than: timedelta) -> int:
        """Forget used nonces older than any link or session can live: their expiry refuses
        them anyway."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(used_links).where(used_links.c.used_at < db_now() - older_than)
            )
        return int(result.rowcount or 0)
