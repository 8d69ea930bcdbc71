"""The ingress listeners: the MX (``smtp.listen``, STARTTLS offered) and, when configured,
the submission listeners (``submission.listen``: STARTTLS required; ``submission.listen_tls``:
implicit TLS)."""

from __future__ import annotations

import asyncio
import logging
import ssl

from moat.counters import CounterStore
from moat.settings import Settings, split_host_port
from moat.submission_users import SubmissionUserStore
from moat.tls import ensure_self_signed, server_context
from services.ingress.handler import IngressHandler, Sessions, smtp_factory
from services.ingress.submission import submission_options

log = logging.getLogger(__name__)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The listeners' TLS context: the configured certificate, else a self-signed one
    generated on first start; None when the MX offers no STARTTLS and no submission
    listener is configured."""
    submission = settings.submission
    if not (settings.smtp.starttls or submission.listen or submission.listen_tls):
        return None
    cert, key = settings.smtp.tls_cert, settings.smtp.tls_key
    if cert is None or key is None:
        cert, key = ensure_self_signed(settings.api.self_signed_dir, settings.smtp.hostname, "smtp")
    return server_context(cert, key)


async def start_listeners(
    settings: Settings,
    handler: IngressHandler,
    sessions: Sessions,
    users: SubmissionUserStore | None,
    counters: CounterStore,
) -> list[asyncio.Server]:
    loop = asyncio.get_running_loop()
    context = tls_context(settings)
    servers = []
    reuse_port = settings.smtp.reuse_port or None  # None: asyncio's default, not set
    host, port = split_host_port(settings.smtp.listen)
    mx_tls = context if settings.smtp.starttls else None
    servers.append(
        await loop.create_server(
            smtp_factory(settings, handler, sessions, mx_tls), host, port, reuse_port=reuse_port
        )
    )
    log.info(
        "SMTP listening on %s:%d for %d domain(s)%s",
        host,
        port,
        len(settings.domains),
        ", STARTTLS offered" if mx_tls else "",
    )
    submission = settings.submission
    if submission.listen or submission.listen_tls:
        options = submission_options(submission, users, counters)
        if submission.listen:
            host, port = split_host_port(submission.listen)
            factory = smtp_factory(settings, handler, sessions, context, **options)
            servers.append(await loop.create_server(factory, host, port, reuse_port=reuse_port))
            log.info("submission listening on %s:%d (STARTTLS required)", host, port)
        if submission.listen_tls:
            host, port = split_host_port(submission.listen_tls)
            # The whole connection is TLS: aiosmtpd's STARTTLS machinery stays out of it.
            factory = smtp_factory(settings, handler, sessions, None, implicit_tls=True, **options)
            servers.append(
                await loop.create_server(factory, host, port, ssl=context, reuse_port=reuse_port)
            )
            log.info("submission listening on %s:%d (implicit TLS)", host, port)
    return servers
