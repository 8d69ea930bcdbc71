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
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

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


def setup_logging(service: str, level: str, log_format: LogFormat = "console") -> None:
    """One handler on the root logger, for every library's loggers too (uvicorn must be run
    with ``log_config=None`` so that it adds none of its own)."""
    handler = logging.StreamHandler()
    handler.addFilter(QueueIdFilter())
    handler.setFormatter(
        JsonFormatter(service) if log_format == "json" else ConsoleFormatter(service)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
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
