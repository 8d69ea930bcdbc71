"""One SMTP transaction to a next hop, reporting a reply for every recipient."""

from __future__ import annotations

import logging
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


async def send(
    route: Route,
    mail_from: str,
    rcpt_tos: Sequence[str],
    data: bytes,
    *,
    local_hostname: str,
    smtp_utf8: bool,
    connect_timeout: float,
    command_timeout: float,
) -> dict[str, Reply]:
    """Relay ``data`` to ``route``; a reply per recipient. Never raises for SMTP or network
    trouble: that becomes a reply (code None for no answer)."""
    replies: dict[str, Reply] = {}
    client = aiosmtplib.SMTP(
        hostname=route.host,
        port=route.port,
        local_hostname=local_hostname,
        timeout=command_timeout,
        start_tls=None,  # opportunistic STARTTLS when offered, like Postfix's "may"
        validate_certs=False,
    )
    try:
        await client.connect(timeout=connect_timeout)
        if client.is_ehlo_or_helo_needed:
            await client.ehlo()
        encoding = "ascii"
        if smtp_utf8:
            if not client.supports_extension("smtputf8"):
                reply = Reply(553, f"5.6.7 {route.host} does not support SMTPUTF8, "
                                   "which this message needs")
                return {rcpt: reply for rcpt in rcpt_tos}
            encoding = "utf-8"
        options = []
        if client.supports_extension("size"):
            options.append(f"SIZE={len(data)}")
        if client.supports_extension("8bitmime") and any(b > 127 for b in data[:65536]):
            options.append("BODY=8BITMIME")
        if smtp_utf8:
            options.append("SMTPUTF8")
        try:
            await client.mail(mail_from, options=options, encoding=encoding)
        except aiosmtplib.SMTPResponseException as exc:
            reply = Reply(exc.code, _one_line(exc.message))
            return {rcpt: reply for rcpt in rcpt_tos}
        accepted: list[str] = []
        for rcpt in rcpt_tos:
            try:
                await client.rcpt(rcpt, encoding=encoding)
                accepted.append(rcpt)
            except aiosmtplib.SMTPResponseException as exc:
                replies[rcpt] = Reply(exc.code, _one_line(exc.message))
        if accepted:
            try:
                response = await client.data(data)
                reply = Reply(response.code, _one_line(response.message))
            except aiosmtplib.SMTPResponseException as exc:
                reply = Reply(exc.code, _one_line(exc.message))
            replies.update({rcpt: reply for rcpt in accepted})
        try:
            await client.quit()
        except aiosmtplib.SMTPException:
            pass  # the transaction is done; a rude hang-up changes nothing
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        reason = Reply(None, _one_line(f"connection to {route.host}:{route.port} failed: "
                                       f"{type(exc).__name__}: {exc}"))
        for rcpt in rcpt_tos:
            replies.setdefault(rcpt, reason)
    finally:
        client.close()
    return replies
