"""Run the whole gateway in the foreground: ``python -m services`` (what ``make run`` does).

A supervisor. It applies the database migrations, starts ingress, scanner(s), delivery and api
as child processes with the same settings, and keeps them running:

- a child that dies is started again after a backoff (1 s, doubling up to 30 s; back to 1 s
  once a child has run for a minute); the log says which child, how it ended and how many
  times it was restarted. The other children go on.
- "Moat is running" is logged once SMTP answers with its 220 greeting and the API answers
  GET /healthz over TLS; if they do not within --ready-timeout, the log says which does not.
- Ctrl-C (SIGINT) or SIGTERM stops it: ingress first (no new mail), then the scanners,
  delivery and api, each sent SIGTERM and killed if it has not exited within shutdown_timeout
  (the time a service has to finish its work) + STOP_MARGIN seconds (to hand back the rest and
  close). The exit status is then 0.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from moat.migrate import upgrade
from moat.runtime import SETTINGS_HELP, setup_logging
from moat.settings import Settings, load_settings, split_host_port
from moat.tls import ensure_self_signed

log = logging.getLogger("moat")

BACKOFF_FIRST = 1.0  # seconds before the first restart of a child that died
BACKOFF_MAX = 30.0  # the backoff doubles at each death up to this
HEALTHY_AFTER = 60.0  # a child that ran this long had recovered: its backoff starts over
TICK = 0.2  # seconds between looks at the children
STOP_MARGIN = 10.0  # seconds past shutdown_timeout a stopping child has to hand back and close
PROBE_EVERY = 0.5  # seconds between readiness probes until Moat is running
PROBE_TIMEOUT = 2.0  # seconds one probe may take

# The order of a stop: ingress takes no new mail before the scanners go, the scanners finish
# what they hold while delivery still runs, and the API answers until the end.
STOP_ORDER = ("ingress", "scanner", "delivery", "api")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies, even by SIGKILL, so no
    service outlives it unsupervised. (Safe in preexec_fn: the supervisor runs no threads.)"""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _prepare_child(nice: int) -> Callable[[], None]:
    """What a child runs before exec: die with the supervisor, and be ``nice`` nicer. Before
    exec, so every thread the service starts inherits the priority (niceness is per thread
    on Linux: a setpriority(2) on a running process's pid would reach its main thread only)."""

    def prepare() -> None:
        _die_with_parent()
        if nice:
            with contextlib.suppress(OSError):
                os.nice(nice)

    return prepare


def describe(status: int) -> str:
    """How a process ended, from Popen's returncode. (uvicorn ends "by SIGTERM" after a clean
    stop on SIGTERM: it raises the signal again once it has shut down.)"""
    if status >= 0:
        return f"exited with status {status}"
    try:
        return f"ended by {signal.Signals(-status).name}"
    except ValueError:  # a signal without a name (real-time signals)
        return f"ended by signal {-status}"


@dataclass
class Child:
    """One service process and its restarts. Times are ``time.monotonic()`` seconds."""

    name: str  # as logged: ingress, scanner-2, ...
    service: str  # ingress, scanner, delivery or api: its place in STOP_ORDER
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)  # on top of the supervisor's environment
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_FIRST  # the wait before its next restart
    restart_at: float | None = None  # while dead: when its backoff is over
    nice: int = 0  # how much nicer than the supervisor it runs (supervisor.background_nice)

    @classmethod
    def of(
        cls, service: str, name: str | None = None, env: dict[str, str] | None = None, nice: int = 0
    ) -> Child:
        command = [sys.executable, "-m", f"services.{service}"]
        return cls(name or service, service, command, dict(env or {}), nice=nice)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, now: float) -> None:
        # A process group of its own: the terminal's Ctrl-C reaches the supervisor only, which
        # then stops the children in order.
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            process_group=0,
            preexec_fn=_prepare_child(self.nice),
            env={**os.environ, **self.env} if self.env else None,
        )
        self.started = now
        self.restart_at = None

    def tend(self, now: float) -> None:
        """Notice that it died and schedule its restart; restart it once the backoff is over."""
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.restart(now)
            return
        assert self.process is not None
        status = self.process.poll()
        if status is None:
            return
        ran = now - self.started
        if ran >= HEALTHY_AFTER:
            self.backoff = BACKOFF_FIRST
        log.error(
            "%s (pid %d) %s after %.1f s; starting it again in %.0f s",
            self.name,
            self.process.pid,
            describe(status),
            ran,
            self.backoff,
        )
        self.restart_at = now + self.backoff
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)

    def restart(self, now: float) -> None:
        self.restarts += 1
        try:
            self.start(now)
        except OSError as exc:  # no process could be made (EAGAIN, ENOMEM): try again later
            log.error(
                "could not start %s (%s); trying again in %g s", self.name, exc, BACKOFF_FIRST
            )
            self.restart_at = now + BACKOFF_FIRST
            return
        assert self.process is not None
        log.warning("restarted %s (pid %d): restart %d", self.name, self.process.pid, self.restarts)

    def terminate(self) -> None:
        assert self.process is not None
        log.info("stopping %s (pid %d)", self.name, self.process.pid)
        self.process.terminate()

    def wait_or_kill(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for it to exit, then SIGKILL it."""
        assert self.process is not None
        began = time.monotonic()
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in time; killing it", self.name)
            self.process.kill()
            status = self.process.wait()
        log.info(
            "stopped %s (pid %d): %s, %.1f s later",
            self.name,
            self.process.pid,
            describe(status),
            time.monotonic() - began,
        )


def stop_all(children: list[Child], timeout: float) -> None:
    """Stop the children stage by stage in STOP_ORDER (the scanners of a stage together): each
    gets SIGTERM and ``timeout`` seconds to exit before it is killed."""
    log.info("stopping %s, each within %g s", ", then ".join(STOP_ORDER), timeout)
    for service in STOP_ORDER:
        stage = [child for child in children if child.service == service and child.running]
        for child in stage:
            child.terminate()
        deadline = time.monotonic() + timeout
        for child in stage:
            child.wait_or_kill(max(0.0, deadline - time.monotonic()))


# --- is it up? ---------------------------------------------------------------------------------


def probe_address(listen: str) -> tuple[str, int]:
    """Where to reach a listener: a wildcard listen address is reached on loopback."""
    host, port = split_host_port(listen)
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), port


def smtp_answers(listen: str) -> bool:
    """A connection that gets the 220 greeting: the ingress is taking mail."""
    try:
        with socket.create_connection(probe_address(listen), timeout=PROBE_TIMEOUT) as sock:
            greeting = sock.makefile("rb").readline()
            sock.sendall(b"QUIT\r\n")
    except OSError:
        return False
    return greeting.startswith(b"220")


def api_answers(listen: str) -> bool:
    """GET /healthz over TLS answers 200."""
    # Our own child, with a certificate that may be self-signed: the probe asks whether HTTPS
    # answers, not whom to trust.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    host, port = probe_address(listen)
    return healthz_answers(
        http.client.HTTPSConnection(host, port, timeout=PROBE_TIMEOUT, context=context)
    )


def healthz_answers(connection: http.client.HTTPConnection) -> bool:
    """``GET /healthz`` answered 200 on ``connection`` (closed after)."""
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


@dataclass
class Readiness:
    """Says "Moat is running" once SMTP and HTTPS answer, or after ``timeout`` which do not."""

    settings: Settings
    timeout: float
    since: float = field(default_factory=time.monotonic)
    announced: bool = False
    complained: bool = False
    next_probe: float = 0.0

    def probe(self, now: float) -> None:
        if self.announced or now < self.next_probe:
            return
        self.next_probe = now + PROBE_EVERY
        smtp, api = self.settings.smtp.listen, self.settings.api.listen
        silent = [
            what
            for what, answers in (
                (f"SMTP on {smtp}", smtp_answers(smtp)),
                (f"HTTPS on {api}", api_answers(api)),
            )
            if not answers
        ]
        if not silent:
            self.announced = True
            log.info(
                "Moat is running: SMTP on %s, API on https://%s, domains: %s. Ctrl-C stops it.",
                smtp,
                api,
                ", ".join(self.settings.domains) or "(none)",
            )
        elif now - self.since >= self.timeout and not self.complained:
            self.complained = True
            log.error(
                "Moat is not running: no answer from %s after %.0f s (see the services' log "
                "above). Still waiting.",
                " or ".join(silent),
                now - self.since,
            )


# --- the supervisor ----------------------------------------------------------------------------


def scanner_port(settings: Settings, n: int) -> int:
    """The probe port of the n-th scanner (from 1), each replica its own: scanner-1 on
    ``scanner.metrics_port``, the others on the ports after the highest of ingress's,
    delivery's and the scanner's (the defaults 9101, 9102, 9103 give 9104, 9105, ...), so
    that none takes another service's. 0 stays 0 (off)."""
    base = settings.scanner.metrics_port
    if not base or n == 1:
        return base
    return _highest_port(settings) + n - 1


def ingress_port(settings: Settings, n: int, scanners: int) -> int:
    """The probe port of the n-th ingress process (from 1): ingress-1 on
    ``ingress.metrics_port``, the others after the extra scanners' ports. 0 stays 0."""
    base = settings.ingress.metrics_port
    if not base or n == 1:
        return base
    return _highest_port(settings) + max(0, scanners - 1) + n - 1


def _highest_port(settings: Settings) -> int:
    return max(
        settings.scanner.metrics_port, settings.delivery.metrics_port, settings.ingress.metrics_port
    )


def probes_at(settings: Settings, child: Child) -> str:
    """Where a child serves /healthz, /readyz and /metrics, as the start line says it."""
    if child.service == "api":
        return f": /healthz, /readyz, /metrics on https://{settings.api.listen}"
    own = getattr(settings, child.service).metrics_port
    port = int(child.env.get(f"MOAT_{child.service.upper()}__METRICS_PORT", own))
    if not port:
        return ""
    return f": /healthz, /readyz, /metrics on http://{settings.metrics_host}:{port}"


def share_listeners(settings: Settings) -> None:
    """Before several ingress processes start on the same ports: the self-signed certificate
    made once here (each would otherwise make its own pair at the same moment and might load
    one's certificate with the other's key), and a word on what each process counts alone."""
    submission = settings.submission
    uses_tls = settings.smtp.starttls or submission.listen or submission.listen_tls
    if uses_tls and (settings.smtp.tls_cert is None or settings.smtp.tls_key is None):
        ensure_self_signed(settings.api.self_signed_dir, settings.smtp.hostname, "smtp")
    if not settings.limits.redis_url:
        log.warning(
            "several ingress processes without limits.redis_url: each counts the session "
            "limits, failed logins and greylisting on its own (a greylisted retry may reach "
            "another process and wait again); configure Redis to share them"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services",
        description=(__doc__ or "").replace("``", ""),
        epilog=f"reads: every setting (passed on to the services), shutdown_timeout.\n\n"
        f"{SETTINGS_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scanners", type=int, default=1, help="scanner processes to run")
    parser.add_argument(
        "--ingress",
        type=int,
        default=1,
        help="ingress processes to run, sharing the SMTP ports (SO_REUSEPORT; 1)",
    )
    parser.add_argument("--no-migrate", action="store_true", help="skip database migrations")
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        help="seconds for SMTP and HTTPS to answer before the log says they do not (60)",
    )
    args = parser.parse_args()

    settings = load_settings()
    setup_logging("moat", settings.log_level, settings.log_format)
    if not args.no_migrate:
        upgrade(settings.database_url)

    # The handler only records the request: the loop below acts on it between two looks at
    # the children, never in the middle of one.
    stop_signal: int | None = None

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stop_signal
        stop_signal = stop_signal or signum

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    # Scanning and delivery are throughput work behind a queue; ingress answers senders.
    background = settings.supervisor.background_nice
    scanners = [
        Child.of(
            "scanner",
            f"scanner-{n}" if args.scanners > 1 else None,
            {"MOAT_SCANNER__METRICS_PORT": str(scanner_port(settings, n))},
            nice=background,
        )
        for n in range(1, args.scanners + 1)
    ]
    # Several ingress processes share the SMTP ports: the kernel spreads the connections.
    several = args.ingress > 1
    ingresses = [
        Child.of(
            "ingress",
            f"ingress-{n}" if several else None,
            {
                "MOAT_INGRESS__METRICS_PORT": str(ingress_port(settings, n, args.scanners)),
                "MOAT_SMTP__REUSE_PORT": "true",
            }
            if several
            else None,
        )
        for n in range(1, args.ingress + 1)
    ]
    if several:
        share_listeners(settings)
    # Started in the reverse of STOP_ORDER: the stages behind ingress come first.
    children = [
        Child.of("api"),
        Child.of("delivery", nice=background),
        *scanners,
        *ingresses,
    ]
    for child in children:
        child.start(time.monotonic())
        assert child.process is not None
        niced = f", nice +{child.nice}" if child.nice else ""
        log.info(
            "started %s (pid %d%s)%s",
            child.name,
            child.process.pid,
            niced,
            probes_at(settings, child),
        )
    readiness = Readiness(settings, args.ready_timeout)

    while stop_signal is None:
        now = time.monotonic()
        for child in children:
            child.tend(now)
        readiness.probe(now)
        time.sleep(TICK)

    log.info("%s: stopping", signal.Signals(stop_signal).name)
    stop_all(children, settings.shutdown_timeout + STOP_MARGIN)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
