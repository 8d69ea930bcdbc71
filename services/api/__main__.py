"""The API service: ``python -m services.api`` (FastAPI under uvicorn, HTTPS only)."""

from __future__ import annotations

import logging

import uvicorn

from moat import runtime
from moat.services import build
from moat.settings import Settings, load_settings, split_host_port
from moat.tls import ensure_self_signed
from services.api import access_log
from services.api.app import create_app
from services.api.signing import SigningKeyMissing, load_signing_key

log = logging.getLogger("api")


async def main(settings: Settings) -> None:
    try:
        signing_key = load_signing_key(settings)
    except SigningKeyMissing as missing:
        log.critical("%s", missing)
        raise SystemExit(78) from None  # EX_CONFIG: a restart does not help
    cert, key = settings.api.tls_cert, settings.api.tls_key
    if cert is None or key is None:
        cert, key = ensure_self_signed(settings.api.self_signed_dir, settings.smtp.hostname)
    host, port = split_host_port(settings.api.listen)
    parts = await build(settings, connect_broker=False)
    app = create_app(settings, parts.repository, parts.broker, signing_key)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's lines go through our handler, in our format (moat/logs.py)
        access_log=True,  # one line per request; query strings with secrets redacted
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,  # an idle keep-alive client must not hold a stop forever
    )
    access_log.install()
    log.info("HTTPS API on https://%s:%d", host, port)
    await uvicorn.Server(config).serve()


READS = """\
reads: api.* (listen, tls_cert, tls_key, self_signed_dir, max_body_bytes,
metrics_cache_seconds, public_url, session_ttl, signing_key: outside env dev it does not start
without one), digest.*, webhooks.*, admin_token (set MOAT_ADMIN_TOKEN; outside env dev the
placeholder is refused), domains (token and rule scopes), database_url, spool_dir (raw copies,
previews), broker.* (retries, releases, digests, queue figures), smtp.hostname (the
self-signed certificate's name, the digests' sender), log_level, env.
connects to: the database, RabbitMQ and the webhooks' URLs; listens for HTTPS on api.listen
(the REST API, and the quarantine web page under /ui/; an access log line per request, without
secrets)."""


if __name__ == "__main__":
    runtime.service_parser("api", __doc__, READS).parse_args()
    runtime.run("api", load_settings(), main)
