"""uvicorn's access log, one line per request, with no secret in it.

uvicorn logs the client, the method, the path *with its query string*, and the status; never a
header, so a bearer token cannot appear. A query string can hold one: the web page's one-click
links carry signed tokens in their URLs (``/ui/link/<token>``), so that token is replaced, the
query string of every path under ``/links/`` and ``/ui/`` is dropped whole, and elsewhere the
value of any parameter whose name says it is a secret (``token``, ``key``, ``sig``...) is
replaced.
"""

from __future__ import annotations

import logging
import re

ACCESS_LOGGER = "uvicorn.access"
REDACTED = "[redacted]"
_SECRET_PATHS = ("/links/", "/ui/")
_SECRET_PARAMETER = re.compile(
    r"(?i)(^|&)([^=&]*(?:token|secret|key|sig|signature|password|passwd|auth)[^=&]*)=[^&]*"
)


# Paths whose last part is itself a secret: a digest's one-click link is /ui/link/<token>.
_SECRET_IN_PATH = ("/ui/link/",)


def redact(path: str) -> str:
    """``path`` (with its query string) as the access log may show it."""
    for prefix in _SECRET_IN_PATH:
        if path.startswith(prefix) and len(path) > len(prefix):
            return prefix + REDACTED
    bare, mark, query = path.partition("?")
    if not mark:
        return path
    if any(bare.startswith(prefix) or bare + "/" == prefix for prefix in _SECRET_PATHS):
        return f"{bare}?{REDACTED}"
    return bare + "?" + _SECRET_PARAMETER.sub(r"\1\2=" + REDACTED, query)


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn's format: '%s - "%s %s HTTP/%s" %d' (client, method, path, version, status)
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact(args[2]), *args[3:])
        return True


def install() -> None:
    logging.getLogger(ACCESS_LOGGER).addFilter(RedactSecrets())
