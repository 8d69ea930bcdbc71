"""One log format for every process and every library in it (our code, uvicorn, aiosmtpd,
aio-pika): ``log_format: console`` (the default, for people) or ``json`` (one object per line,
for machines: ``MOAT_LOG_FORMAT=json``).

A JSON line has ``timestamp`` (UTC, RFC 3339), ``level``, ``service``, ``logger``, ``event``
(the message), ``queue_id`` on every line that concerns a message, and ``exception`` when
there is one. The queue id comes from ``extra={"queue_id": ...}`` or, within the handling of
one message (a queue worker's task, ingress's DATA), from a context variable set once, so
that every line logged meanwhile, by any library, carries it and one message can be followed
across services: ``jq 'select(.queue_id == "01J...")'``.

Never log a message's body: a line says what happened to a message, not what it says.

An event loop never waits for stderr (``BackgroundStreamHandler``): a line logged on a thread
that runs an event loop is queued and written by a thread of its own, so a slow or full pipe
(a terminal, a supervisor's log reader, a container runtime) stalls no SMTP session. Lines
from other threads are written at once, after the queued ones; every line is written before
the process exits (``logging.shutdown`` flushes the handler).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["console", "json"]

_queue_id: ContextVar[str | None] = ContextVar("queue_id", default=None)


def bind_queue_id(message_id: str | None) -> None:
    """Every line logged from here on in this task (and tasks it starts) concerns this message."""
    _queue_id.set(message_id)


def current_queue_id() -> str | None:
    return _queue_id.get()


class QueueIdFilter(logging.Filter):
    """Puts the context's queue id on the record unless the call named one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "queue_id", None) is None:
            record.queue_id = _queue_id.get()
        return True


# LogRecord attributes that are not ``extra`` fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "queue_id",
    "service",
    "color_message",  # uvicorn's coloured copy of the message
}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "event": record.getMessage(),
        }
        queue_id = getattr(record, "queue_id", None)
        if queue_id:
            line["queue_id"] = queue_id
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value if isinstance(value, int | float | bool | str) else str(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class ConsoleFormatter(logging.Formatter):
    """The console line, with ``[queue id]`` after the logger when there is one."""

    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s {service} %(levelname)s %(name)s:%(queue)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        queue_id = getattr(record, "queue_id", None)
        # Our own lines name the message in their text already; say it only when they don't.
        record.queue = f" [{queue_id}]" if queue_id and queue_id not in record.getMessage() else ""
        return super().format(record)


class BackgroundStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A ``StreamHandler`` whose lines from an event loop's thread are written by a thread of
    its own. Writing to stderr blocks when the pipe is full, and at ~0.7 ms a line under load
    the one INFO line per accepted message was 6% of ingress's event loop (docs/performance.md).

    The record is made final on the caller's thread (its queue id from the context, its message
    from its arguments, which may change later); formatting and writing happen on the writer.
    The queue is bounded: should the stream stay blocked for 10,000 lines, the loop waits, as it
    did before, rather than the process growing without end."""

    QUEUE_LIMIT = 10_000
    # The writer wakes for a line, waits this long for the lines that follow it, and writes
    # them all with one system call: one wake-up and one write per burst, not per line (a
    # busy service logs a line per message; docs/performance.md has what it saved). Lines
    # logged off the event loop wait for the queue to empty, so at most this long more.
    LINGER = 0.01
    BURST_LIMIT = 1_000

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._queue: queue.Queue[logging.LogRecord | None] = queue.Queue(self.QUEUE_LIMIT)
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        # Serialises writes to the stream. Not the handler's own lock: logging.shutdown holds
        # that while it flushes, and the flush waits for the writer thread to empty the queue.
        self._stream_lock = threading.RLock()

    def handle(self, record: logging.LogRecord) -> bool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self.flush()  # the queued lines first: they were logged before this one
            return bool(super().handle(record))
        # On an event loop: filter here (the queue id lives in this task's context), and take
        # no lock a write to the stream holds.
        rv = self.filter(record)
        if isinstance(rv, logging.LogRecord):
            record = rv
        if rv:
            record.msg = record.getMessage()
            record.args = None
            self._start_writer()
            self._queue.put(record)
        return bool(rv)

    def _start_writer(self) -> None:
        if self._writer is not None:
            return
        with self._writer_lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_queued, daemon=True)
                self._writer.name = "log-writer"
                self._writer.start()

    def _write_queued(self) -> None:
        while True:
            burst = [self._queue.get()]
            if burst[0] is not None:
                time.sleep(self.LINGER)
            while burst[-1] is not None and len(burst) < self.BURST_LIMIT:
                try:
                    burst.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._emit_burst([record for record in burst if record is not None])
            finally:
                for _ in burst:
                    self._queue.task_done()
            if burst[-1] is None:
                return

    def _emit_burst(self, records: list[logging.LogRecord]) -> None:
        lines = []
        for record in records:
            try:
                lines.append(self.format(record) + self.terminator)
            except Exception:
                self.handleError(record)
        if not lines:
            return
        with self._stream_lock:
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except Exception:
                self.handleError(records[-1])

    def emit(self, record: logging.LogRecord) -> None:
        with self._stream_lock:
            super().emit(record)

    def flush(self) -> None:
        """Wait until every queued line is written, then flush the stream."""
        writer = self._writer
        if writer is not None and threading.current_thread() is writer:
            # ``emit`` flushes after each line; the handler's lock may be held by a thread
            # waiting for this one (logging.shutdown), so the stream is flushed without it.
            with self._stream_lock:
                if self.stream and hasattr(self.stream, "flush"):
                    self.stream.flush()
            return
        if writer is not None and writer.is_alive():
            self._queue.join()
        with self._stream_lock:
            super().flush()

    def close(self) -> None:
        writer = self._writer
        if writer is not None and writer.is_alive():
            self._queue.put(None)
            writer.join(timeout=5)
        self._writer = None
        super().close()


def setup_logging(service: str, level: str, log_format: LogFormat = "console") -> None:
    """One handler on the root logger, for every library's loggers too (uvicorn must be run
    with ``log_config=None`` so that it adds none of its own)."""
    handler = BackgroundStreamHandler()
    handler.addFilter(QueueIdFilter())
    handler.setFormatter(
        JsonFormatter(service) if log_format == "json" else ConsoleFormatter(service)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, BackgroundStreamHandler):
            old.close()  # writes what it still holds
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Python's warnings (a library's deprecation notice) are printed to stderr as they are: made
    # log records, they are lines of the one format too.
    logging.captureWarnings(True)
    # aio-pika and aiormq log every reconnect attempt at INFO/WARNING with tracebacks.
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    logging.getLogger("aio_pika").setLevel(logging.ERROR)
    # aiosmtpd logs every command of every session at INFO: too much for a busy gateway.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    # uvicorn's loggers: through the root handler, in the same format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
