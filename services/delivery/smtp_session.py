"""SMTP transactions to next hops, reporting a reply for every recipient, over cached
connections (like Postfix's connection cache: a session that ended well serves the next
message to the same host for a few seconds, saving the connect, greeting and EHLO).

This module reports what happened and never judges it: every network trouble (a refused
connection, a timeout, a reset, a name that does not resolve, a 421 greeting, a drop after the
final dot) becomes a ``Reply`` for each recipient it concerns, and ``outcomes.judge`` decides.
It never raises for anything a next hop does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import defaultdict
from collections.abc import Sequence

import aiosmtplib

from services.delivery.outcomes import NoReply, Reply
from services.delivery.routing import Route

log = logging.getLogger(__name__)

# What a next hop (or the network to it) can make a session raise.
_NETWORK_TROUBLE = (aiosmtplib.SMTPException, OSError, TimeoutError)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:900]


def failure_reply(exc: BaseException, route: Route, *, after_data: bool = False) -> Reply:
    """The ``Reply`` for a session that broke with ``exc``: a greeting's own reply when there
    was one, else why no reply came."""
    where = f"{route.host}:{route.port}"
    if isinstance(exc, aiosmtplib.SMTPConnectResponseError | aiosmtplib.SMTPHeloError):
        return Reply(exc.code, _one_line(exc.message), greeting=True)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return Reply(exc.code, _one_line(exc.message))
    cause = exc.__cause__ if isinstance(exc, aiosmtplib.SMTPConnectError) else exc
    kind: NoReply
    if after_data and not isinstance(exc, aiosmtplib.SMTPConnectError):
        kind, what = NoReply.DROPPED_AFTER_DATA, "connection lost after the message was sent"
    elif isinstance(exc, TimeoutError) or isinstance(cause, TimeoutError):
        kind, what = NoReply.TIMEOUT, "no answer in time"
    elif isinstance(cause, socket.gaierror):
        kind, what = NoReply.DNS, "host name lookup failed"
    elif isinstance(cause, ConnectionRefusedError):
        kind, what = NoReply.REFUSED, "connection refused"
    elif isinstance(cause, ssl.SSLError):
        kind, what = NoReply.TLS, "TLS failed"
    elif isinstance(exc, aiosmtplib.SMTPConnectError) and not isinstance(
        cause, aiosmtplib.SMTPServerDisconnected
    ):
        kind, what = NoReply.REFUSED, "cannot connect"
    else:
        kind, what = NoReply.RESET, "connection lost"
    detail = _one_line(str(cause or exc)) or type(exc).__name__
    return Reply(None, f"{what}: {where}: {detail}"[:900], failure=kind)


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
            try:
                client, reused = await self._session(route)
            except _NETWORK_TROUBLE as exc:
                reply = failure_reply(exc, route)
                return {rcpt: reply for rcpt in rcpt_tos}
            try:
                replies = await self._transaction(
                    client, route, mail_from, rcpt_tos, data, smtp_utf8=smtp_utf8, reused=reused
                )
            except _StaleConnection:
                client.close()
                continue
            except BaseException:
                client.close()
                raise
            self._keep(route, client)
            return replies
        reply = Reply(
            None, f"connection to {route.host}:{route.port} kept closing", failure=NoReply.RESET
        )
        return {rcpt: reply for rcpt in rcpt_tos}

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
        """One MAIL, RCPT..., DATA. Recipients that got a reply keep it when the session breaks
        later; the others get the breakage (and the client is closed)."""
        encoding = "ascii"
        if not smtp_utf8 and not (mail_from.isascii() and all(r.isascii() for r in rcpt_tos)):
            # Ingress refuses such an envelope (553 5.6.7); one stored before it did is not
            # relayable over a plain (ASCII) transaction, and that is permanent.
            reply = Reply(553, "5.6.7 a non-ASCII address needs SMTPUTF8, not declared")
            return {rcpt: reply for rcpt in rcpt_tos}
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
        replies: dict[str, Reply] = {}
        accepted: list[str] = []
        in_data = False
        try:
            try:
                await client.mail(mail_from, options=options, encoding=encoding)
            except aiosmtplib.SMTPServerDisconnected as exc:
                if reused:
                    raise _StaleConnection from exc
                raise
            except aiosmtplib.SMTPResponseException as exc:
                if reused and exc.code == 421:
                    raise _StaleConnection from exc
                reply = Reply(exc.code, _one_line(exc.message))
                await _reset_or_close(client)
                return {rcpt: reply for rcpt in rcpt_tos}
            for rcpt in rcpt_tos:
                try:
                    await client.rcpt(rcpt, encoding=encoding)
                    accepted.append(rcpt)
                except aiosmtplib.SMTPResponseException as exc:
                    replies[rcpt] = Reply(exc.code, _one_line(exc.message))
            if not accepted:
                await _reset_or_close(client)
                return replies
            in_data = True
            try:
                response = await client.data(data)
                reply = Reply(response.code, _one_line(response.message))
            except aiosmtplib.SMTPResponseException as exc:
                reply = Reply(exc.code, _one_line(exc.message))
        except _NETWORK_TROUBLE as exc:
            client.close()
            broken = failure_reply(exc, route, after_data=in_data)
            return {rcpt: replies.get(rcpt, broken) for rcpt in rcpt_tos}
        replies.update({rcpt: reply for rcpt in accepted})
        return replies


async def _reset_or_close(client: aiosmtplib.SMTP) -> None:
    """RSET after a refused transaction so the session can serve the next one; a server that
    hung up (421) is simply closed."""
    try:
        await client.rset()
    except _NETWORK_TROUBLE:
        client.close()


async def _quit(client: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
        await asyncio.wait_for(client.quit(), 5)
    client.close()
