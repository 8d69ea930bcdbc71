"""SMTP transactions to next hops, reporting a reply for every recipient, over cached
connections (like Postfix's connection cache: a session that ended well serves the next
message to the same host for a few seconds, saving the connect, greeting and EHLO)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import aiosmtplib

from moat.model import RecipientStatus
from services.delivery.routing import Route

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reply:
    code: int | None  # None: no reply at all (connection failed, timed out)
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}" if self.code is not None else self.text


def classify(reply: Reply) -> RecipientStatus:
    """2xx delivered; 5xx bounced; 4xx, no reply or anything odd is deferred (retried)."""
    if reply.code is not None and 200 <= reply.code < 300:
        return RecipientStatus.DELIVERED
    if reply.code is not None and 500 <= reply.code < 600:
        return RecipientStatus.BOUNCED
    return RecipientStatus.DEFERRED


def _one_line(text: str) -> str:
    return " ".join(text.split())[:900]


class _StaleConnection(Exception):
    """A cached connection turned out closed before the transaction began."""


class SmtpClient:
    """Sends messages to next hops, keeping idle sessions for reuse."""

    def __init__(
        self,
        local_hostname: str,
        connect_timeout: float,
        command_timeout: float,
        idle_seconds: float = 5.0,
        max_idle_per_route: int = 32,
    ) -> None:
        self.local_hostname = local_hostname
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.idle_seconds = idle_seconds
        self.max_idle_per_route = max_idle_per_route
        self._idle: dict[tuple[str, int], list[tuple[float, aiosmtplib.SMTP]]] = defaultdict(list)

    async def send(
        self, route: Route, mail_from: str, rcpt_tos: Sequence[str], data: bytes, *, smtp_utf8: bool
    ) -> dict[str, Reply]:
        """Relay ``data`` to ``route``; a reply per recipient. Never raises for SMTP or network
        trouble: that becomes a reply (code None for no answer)."""
        for _ in range(3):  # a cached session may have been closed by the server meanwhile
            client, reused = await self._session(route)
            try:
                replies = await self._transaction(
                    client, route, mail_from, rcpt_tos, data, smtp_utf8=smtp_utf8, reused=reused
                )
            except _StaleConnection:
                client.close()
                continue
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                client.close()
                reason = Reply(
                    None,
                    _one_line(
                        f"conversation with {route.host}:{route.port} "
                        f"failed: {type(exc).__name__}: {exc}"
                    ),
                )
                return {rcpt: reason for rcpt in rcpt_tos}
            except BaseException:
                client.close()
                raise
            self._keep(route, client)
            return replies
        reason = Reply(None, f"connection to {route.host}:{route.port} kept closing")
        return {rcpt: reason for rcpt in rcpt_tos}

    async def _session(self, route: Route) -> tuple[aiosmtplib.SMTP, bool]:
        idle = self._idle[(route.host, route.port)]
        now = time.monotonic()
        while idle:
            since, client = idle.pop()
            if now - since < self.idle_seconds and client.is_connected:
                return client, True
            client.close()
        client = aiosmtplib.SMTP(
            hostname=route.host,
            port=route.port,
            local_hostname=self.local_hostname,
            timeout=self.command_timeout,
            start_tls=None,  # opportunistic STARTTLS when offered, like Postfix's "may"
            validate_certs=False,
        )
        try:
            await client.connect(timeout=self.connect_timeout)
            if client.is_ehlo_or_helo_needed:
                await client.ehlo()
        except BaseException:
            client.close()
            raise
        return client, False

    def _keep(self, route: Route, client: aiosmtplib.SMTP) -> None:
        idle = self._idle[(route.host, route.port)]
        if client.is_connected and len(idle) < self.max_idle_per_route:
            idle.append((time.monotonic(), client))
        else:
            client.close()

    async def expire_idle(self) -> None:
        """Say goodbye to sessions idle for longer than ``idle_seconds``."""
        now = time.monotonic()
        for idle in self._idle.values():
            expired = [client for since, client in idle if now - since >= self.idle_seconds]
            idle[:] = [(since, c) for since, c in idle if now - since < self.idle_seconds]
            for client in expired:
                await _quit(client)

    async def close(self) -> None:
        for idle in self._idle.values():
            for _, client in idle:
                await _quit(client)
            idle.clear()

    async def _transaction(
        self,
        client: aiosmtplib.SMTP,
        route: Route,
        mail_from: str,
        rcpt_tos: Sequence[str],
        data: bytes,
        *,
        smtp_utf8: bool,
        reused: bool,
    ) -> dict[str, Reply]:
        encoding = "ascii"
        if smtp_utf8:
            if not client.supports_extension("smtputf8"):
                reply = Reply(
                    553, f"5.6.7 {route.host} does not support SMTPUTF8, which this message needs"
                )
                return {rcpt: reply for rcpt in rcpt_tos}
            encoding = "utf-8"
        options = []
        if client.supports_extension("size"):
            options.append(f"SIZE={len(data)}")
        if client.supports_extension("8bitmime") and not data.isascii():
            options.append("BODY=8BITMIME")
        if smtp_utf8:
            options.append("SMTPUTF8")
        try:
            await client.mail(mail_from, options=options, encoding=encoding)
        except aiosmtplib.SMTPServerDisconnected as exc:
            if reused:
                raise _StaleConnection from exc
            raise
        except aiosmtplib.SMTPResponseException as exc:
            if reused and exc.code == 421:
                raise _StaleConnection from exc
            await client.rset()
            reply = Reply(exc.code, _one_line(exc.message))
            return {rcpt: reply for rcpt in rcpt_tos}
        replies: dict[str, Reply] = {}
        accepted: list[str] = []
        for rcpt in rcpt_tos:
            try:
                await client.rcpt(rcpt, encoding=encoding)
                accepted.append(rcpt)
            except aiosmtplib.SMTPResponseException as exc:
                replies[rcpt] = Reply(exc.code, _one_line(exc.message))
        if not accepted:
            await client.rset()
            return replies
        try:
            response = await client.data(data)
            reply = Reply(response.code, _one_line(response.message))
        except aiosmtplib.SMTPResponseException as exc:
            reply = Reply(exc.code, _one_line(exc.message))
        replies.update({rcpt: reply for rcpt in accepted})
        return replies


async def _quit(client: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
        await asyncio.wait_for(client.quit(), 5)
    client.close()
