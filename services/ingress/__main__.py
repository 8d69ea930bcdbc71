"""The ingress service: ``python -m services.ingress``.

Listens for SMTP, and every ``ingress.sweep_interval`` republishes stored messages whose
publish was never confirmed (the process died between the two)."""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import timedelta

from moat import metrics, probes, runtime
from moat.counters import build_store
from moat.model import ScanRequest
from moat.sender_rules import CachedRules, SenderRuleStore
from moat.services import build, every
from moat.settings import Settings, load_settings
from moat.submission_users import SubmissionUserStore
from moat.topology import SCAN
from services.ingress import cli
from services.ingress.handler import IngressHandler, QueuedMarker, Sessions
from services.ingress.limits import Greylist, SessionLimits
from services.ingress.listeners import start_listeners

log = logging.getLogger("ingress")


async def main(settings: Settings) -> None:
    probe = await probes.serve("ingress", settings, settings.ingress.metrics_port)
    parts = await build(settings)
    confirmed = QueuedMarker(parts.repository)
    sender_rules = None
    if any(
        settings.scanner_policy(domain).sender_lists.block_action == "reject"
        for domain in [None, *settings.domains]
    ):
        sender_rules = CachedRules(
            SenderRuleStore(parts.repository.engine), settings.scanner.sender_lists.poll_interval
        )
    counters = build_store(
        settings.limits.redis_url,
        settings.limits.redis_prefix,
        settings.limits.redis_retry,
        settings.limits.redis_timeout,
    )
    limits = SessionLimits(settings.limits, settings.smtp, counters)
    greylist = None
    if any(settings.greylists(domain) for domain in settings.domains):
        greylist = Greylist(settings.greylist, counters)
    handler = IngressHandler(
        settings,
        parts.repository,
        parts.store,
        parts.broker,
        confirmed,
        sender_rules,
        limits,
        greylist,
    )

    async def republish_unconfirmed() -> None:
        grace = timedelta(seconds=settings.ingress.sweep_grace)
        for message_id in await parts.repository.unconfirmed(grace):
            await parts.broker.publish(SCAN, ScanRequest(message_id=message_id))
            confirmed.add(message_id)
            log.warning(
                "republished %s: its first publish was never confirmed",
                message_id,
                extra={"queue_id": message_id},
            )
            metrics.get().job_did("unconfirmed_sweep", "republished", 1)

    leftovers = await asyncio.to_thread(
        parts.store.sweep_temporary, settings.retention.orphan_grace
    )
    if leftovers:
        log.warning("removed %d temporary spool file(s) of interrupted writes", leftovers)

    sessions = Sessions()
    servers = await start_listeners(
        settings, handler, sessions, SubmissionUserStore(parts.repository.engine), counters
    )
    probe.readiness = lambda: [
        what
        for what, up in (
            ("broker connection", parts.broker.connected),
            ("SMTP listener", all(server.is_serving() for server in servers)),
        )
        if not up
    ]
    tasks = [
        asyncio.create_task(confirmed.run()),
        asyncio.create_task(
            every(settings.ingress.sweep_interval, republish_unconfirmed, "unconfirmed sweep")
        ),
    ]
    try:
        await runtime.wait_for_stop_signal()
    finally:
        log.info("stopping: no new sessions; ending %d open one(s)", len(sessions.open))
        for server in servers:
            server.close()
        await sessions.close_all(settings.shutdown_timeout)
        for server in servers:
            await server.wait_closed()
        for task in tasks:
            task.cancel()
        await confirmed.flush()
        await counters.close()
        await parts.close()
        await probe.close()


READS = """\
reads: smtp.* (listen, hostname, limits, trusted_networks, starttls, tls_cert, tls_key;
api.self_signed_dir for a generated certificate), submission.* (the submission listeners and
their users; more users from the database), domains (the protected domains; any other recipient
is refused; recipients or verify: callout verify their users at RCPT; require_tls), callout.*,
scanner.sender_lists (block_action: reject refuses blocked senders at RCPT; the rules are read
from the database), ingress.* (the sweep), limits.* and greylist.* (per client limits,
greylisting; Redis if limits.redis_url), spool_min_free, database_url, spool_dir, broker.*,
shutdown_timeout, log_level, env.
connects to: the database, RabbitMQ and Redis (limits.redis_url, if set); listens for SMTP
on smtp.listen, and on submission.listen / submission.listen_tls when set.
`hash-password` reads a password (twice, from a terminal; once from a pipe) and prints its
argon2 hash for submission.users; it reads no settings."""


if __name__ == "__main__":
    parser = runtime.service_parser("ingress", __doc__, READS)
    cli.add_commands(parser)
    args = parser.parse_args()
    if args.command is not None:
        sys.exit(cli.run(args))
    runtime.run("ingress", load_settings(), main)
