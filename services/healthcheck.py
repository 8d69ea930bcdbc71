"""The container's health check: ``python -m services.healthcheck [SERVICE]``, exit 0 when the
service in this container answers, 1 when it does not. One image runs all four services, so the
check finds out which one this container runs (its PID 1 command line: ``python -m
services.<name>``) unless told, and asks it what an operator would:

- ingress: the SMTP greeting (220), not just an open port: a stuck event loop fails it;
- api: ``GET /healthz`` over HTTPS (the certificate may be self-signed: not checked here);
- scanner, delivery: ``GET /healthz`` on their small HTTP port (``<service>.metrics_port``,
  9101 and 9102 by default);
- gateway (PID 1 is ``python -m services``, the whole gateway in one container, as for a
  trial): ingress and api both; the supervisor itself restarts a scanner or delivery that dies.

Liveness only: readiness (``/readyz``: broker and database reachable) is Kubernetes' readiness
probe; a container restarted because RabbitMQ is away would not bring RabbitMQ back.
"""

from __future__ import annotations

import http.client
import sys
from pathlib import Path

from moat.settings import Settings, load_settings, split_host_port

SERVICES = ("ingress", "scanner", "delivery", "api", "gateway")
DEFAULT_PORTS = {"scanner": 9101, "delivery": 9102}
TIMEOUT = 5.0


def service_of_pid1(cmdline: Path = Path("/proc/1/cmdline")) -> str | None:
    try:
        words = cmdline.read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    for word in words:
        if word == "services":
            return "gateway"
        if word.startswith("services.") and word.removeprefix("services.") in SERVICES:
            return word.removeprefix("services.")
    return None


def http_healthz(port: int) -> bool:
    from services.__main__ import healthz_answers

    return healthz_answers(http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT))


def healthy(service: str, settings: Settings) -> bool:
    from services.__main__ import api_answers, smtp_answers

    if service == "gateway":
        return smtp_answers(settings.smtp.listen) and api_answers(settings.api.listen)
    if service == "ingress":
        return smtp_answers(settings.smtp.listen)
    if service == "api":
        return api_answers(settings.api.listen)
    # The port is the metrics server's (moat's observability settings); read by name so this
    # check needs nothing more of the settings than that they have it.
    port = getattr(getattr(settings, service), "metrics_port", None) or DEFAULT_PORTS[service]
    split_host_port(f"127.0.0.1:{port}")  # a port out of range fails here, loudly
    return http_healthz(int(port))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    service = args[0] if args else service_of_pid1()
    if service not in SERVICES:
        print(f"usage: python -m services.healthcheck [{'|'.join(SERVICES)}]", file=sys.stderr)
        return 2
    ok = healthy(service, load_settings())
    print(f"{service}: {'healthy' if ok else 'not answering'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
