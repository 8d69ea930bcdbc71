"""Every Prometheus metric of the pipeline, defined in one place (docs/observability.md has the
table). The API's request metrics stay in ``services/api/middleware.py`` (a registry per app).

Each service process has its own registry and serves it itself (``moat/probes.py`` for
ingress, scanner and delivery; the API's ``/metrics``): no multiprocess mode, no shared files.
Scanner replicas are told apart by the scrape target, as Prometheus expects.

The hooks in the services are one line each: ``metrics.get().<metric>...``. The registry is
made on first use per process, not at import (``Metrics()`` makes a fresh one for a test).
That is one process-wide object on purpose: the hooks sit deep in shared code (the consumer
base class, the check runner, the background-job loop) where passing an object down would
touch every signature on the way.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds. Time to 250 should be milliseconds; a scan tens of milliseconds (clamd and DNS can
# take seconds); an attempt as long as the next hop; end to end includes retries (days).
TIME_TO_250_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SCAN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
END_TO_END_BUCKETS = (
    *(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    *(300, 1800, 3600, 6 * 3600, 86400, 5 * 86400),
)


# Statuses after which a message is done with delivery (moat_end_to_end_seconds).
FINAL_STATUSES = ("delivered", "partially_delivered", "bounced")


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()

        # --- ingress ---
        self.ingress_messages = Counter(
            "moat_ingress_messages",
            "Messages at the end of DATA, by result: queued (250), failed (451/452 after the "
            "attempt to store or queue it), loop (554, too many Received: fields)",
            ["result"],
            registry=registry,
        )
        self.ingress_limited = Counter(
            "moat_ingress_limited",
            "Refusals by the per-client limits and greylisting (docs/ingress-limits.md): "
            "connections, errors, early_talker, message_rate, recipient_rate, greylisted",
            ["limit"],
            registry=registry,
        )
        self.time_to_250 = Histogram(
            "moat_ingress_time_to_250_seconds",
            "From the end of DATA to the 250 reply: spool fsync, database insert, broker confirm",
            registry=registry,
            buckets=TIME_TO_250_BUCKETS,
        )

        # --- scanner ---
        self.scanned = Counter(
            "moat_scanner_messages",
            "Messages given a verdict, by verdict (clean, spam, virus, policy) and action "
            "(deliver, quarantine)",
            ["verdict", "action"],
            registry=registry,
        )
        self.scan_duration = Histogram(
            "moat_scanner_scan_duration_seconds",
            "One message from its request to the recorded verdict: read, parse, checks, judge",
            registry=registry,
            buckets=SCAN_BUCKETS,
        )
        self.check_duration = Histogram(
            "moat_scanner_check_duration_seconds",
            "Time one check took on one message, by check",
            ["check"],
            registry=registry,
            buckets=SCAN_BUCKETS,
        )
        self.check_failures = Counter(
            "moat_scanner_check_failures",
            "Checks that raised or overran scanner.check_timeout (a *_FAIL finding), by check "
            "and reason (error, timeout)",
            ["check", "reason"],
            registry=registry,
        )

        # --- delivery ---
        self.delivery_attempts = Counter(
            "moat_delivery_attempts",
            "Delivery attempts, by the message's status after it (delivered, "
            "partially_delivered, bounced, deferred)",
            ["status"],
            registry=registry,
        )
        self.delivery_replies = Counter(
            "moat_delivery_replies",
            "Per recipient of an attempt: the next hop's reply class (2xx, 4xx, 5xx, other), "
            "network (no reply: refused, timeout, reset, DNS, TLS) or no_route",
            ["reply_class"],
            registry=registry,
        )
        self.delivery_duration = Histogram(
            "moat_delivery_attempt_duration_seconds",
            "One delivery attempt: claim to recorded outcome (every route's SMTP transaction)",
            registry=registry,
            buckets=DELIVERY_BUCKETS,
        )
        self.end_to_end = Histogram(
            "moat_end_to_end_seconds",
            "From reception to the message's final outcome (delivered, partially_delivered or "
            "bounced), retries included",
            ["status"],
            registry=registry,
            buckets=END_TO_END_BUCKETS,
        )

        # --- queue workers (scanner and delivery) ---
        self.consumed = Counter(
            "moat_consumer_messages",
            "Queue messages a worker finished with, by queue and result: ok (acked), retry "
            "(returned to the queue), dead_lettered (marked failed), handed_back (stop), "
            "unreadable",
            ["queue", "result"],
            registry=registry,
        )
        self.broker_connected = Gauge(
            "moat_broker_connected",
            "1 while this process has its broker connection, else 0",
            registry=registry,
        )

        # --- queues, read from RabbitMQ (passive declares) by the API on scrape ---
        self.queue_messages = Gauge(
            "moat_queue_messages",
            "Messages ready in each queue (scan, deliver, deliver.retry.<s>, dead)",
            ["queue"],
            registry=registry,
        )
        self.queue_consumers = Gauge(
            "moat_queue_consumers",
            "Consumers registered on each queue",
            ["queue"],
            registry=registry,
        )

        # --- background jobs: sweeps, retention, dead letters ---
        self.job_runs = Counter(
            "moat_job_runs",
            "Runs of each periodic job (unconfirmed_sweep, overdue_sweep, dead_letter_sweep, "
            "retention, ...), by result (ok, error)",
            ["job", "result"],
            registry=registry,
        )
        self.job_items = Counter(
            "moat_job_items",
            "What periodic jobs did, by job and kind (republished, dead_lettered, purged, "
            "removed, files, temporary)",
            ["job", "kind"],
            registry=registry,
        )

    def job_did(self, job: str, kind: str, count: int) -> None:
        if count:
            self.job_items.labels(job, kind).inc(count)

    def check_failed(self, check: str, *, timed_out: bool) -> None:
        self.check_failures.labels(check, "timeout" if timed_out else "error").inc()

    def queued(self, seconds: float) -> None:
        """Ingress answered 250 ``seconds`` after the end of DATA."""
        self.ingress_messages.labels("queued").inc()
        self.time_to_250.observe(seconds)

    def judged(self, verdict: str, action: str, seconds: float) -> None:
        """The scanner recorded a verdict, ``seconds`` after it took the request."""
        self.scanned.labels(verdict, action).inc()
        self.scan_duration.observe(seconds)

    def attempted(self, status: str, reply_classes: list[str], age: float) -> None:
        """A delivery attempt was recorded: the message's new status, each recipient's reply
        class, and (for a final status) how long since the message was received."""
        self.delivery_attempts.labels(status).inc()
        for reply in reply_classes:
            self.delivery_replies.labels(reply).inc()
        if status in FINAL_STATUSES:
            self.end_to_end.labels(status).observe(max(age, 0.0))


_process: Metrics | None = None


def get() -> Metrics:
    """This process's metrics, made on first use."""
    global _process
    if _process is None:
        _process = Metrics()
    return _process


def job_label(name: str) -> str:
    """A job's name as ``moat.services.every`` logs it, as a label value."""
    return name.lower().replace("-", "_").replace(" ", "_")


def reply_class(code: int | None, no_route: bool) -> str:
    """The class of a next hop's reply for ``moat_delivery_replies``."""
    if code is None:
        return "no_route" if no_route else "network"
    if code // 100 in (2, 4, 5):
        return f"{code // 100}xx"
    return "other"
