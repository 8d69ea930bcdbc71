"""ClamAV: the raw message and each decoded attachment streamed to ``clamd`` with INSTREAM.

clamd speaks a line protocol on a unix socket or TCP. A scan is one connection:
``zINSTREAM\\0``, then the data as chunks each prefixed by its length (4 bytes, big-endian),
then a zero length; clamd answers ``stream: OK``, ``stream: <Signature> FOUND`` or
``<reason> ERROR``, NUL-terminated. clamd decodes MIME, archives and documents itself; we also
send each decoded attachment on its own, so a part the MIME parser of clamd reads differently
from ours (malformed mail) is still scanned as the recipient's client will see it.

clamd unreachable, slow or erring: with ``fail_closed`` (the default) the check raises, the
runner records ``CLAMAV_FAIL`` and the message is retried, never passed as clean; without it
an info finding ``CLAMAV_UNAVAILABLE`` is reported and the mail goes on unscanned.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from pathlib import Path

from moat.model import Finding
from moat.settings import ClamAVSettings, Settings, split_host_port
from services.scanner.checks.base import ParsedMessage

log = logging.getLogger(__name__)

CHUNK_SIZE = 64 * 1024  # bytes per INSTREAM chunk
REPLY_LIMIT = 64 * 1024  # the longest answer we accept from clamd
# Of the check's time budget (``scanner.check_timeout``), the part the scans may use; what is
# left lets us report in time, so a slow clamd is our finding, not the runner's timeout.
BUDGET_SHARE = 0.9


class ClamdError(Exception):
    """clamd could not be reached, did not answer in time, or could not scan."""


class StreamTooBig(ClamdError):
    """clamd refused the stream: longer than its ``StreamMaxLength``."""


def parse_reply(reply: bytes) -> str | None:
    """The signature clamd found, or None for ``OK``; raises ``ClamdError`` on ``ERROR``."""
    text = reply.rstrip(b"\0").decode("utf-8", "replace").strip()
    prefix, sep, result = text.partition(": ")
    if not sep or prefix != "stream":
        result = text  # errors about the command itself come without the "stream: " prefix
    if result == "OK":
        return None
    if result.endswith(" FOUND"):
        return result.removesuffix(" FOUND").strip() or "unnamed"
    if result.endswith("ERROR") and "size limit exceeded" in result:
        raise StreamTooBig(text)
    raise ClamdError(f"clamd answered {text[:200]!r}")


class Clamd:
    """A minimal async clamd client: one connection per command, every step bounded in time.

    Plain non-blocking sockets rather than asyncio streams: when clamd refuses a stream it
    answers and hangs up while we are still sending, and its answer must still be read after
    our write failed (a stream transport drops it)."""

    def __init__(
        self,
        path: Path | None = None,
        tcp: str | None = None,
        connect_timeout: float = 2.0,
        scan_timeout: float = 15.0,
    ) -> None:
        if path is None and tcp is None:
            raise ValueError("clamd needs a unix socket path or a TCP host:port")
        self.socket = path
        self.tcp = split_host_port(tcp) if tcp else None
        self.connect_timeout = connect_timeout
        self.scan_timeout = scan_timeout

    @classmethod
    def from_settings(cls, settings: ClamAVSettings) -> Clamd:
        return cls(settings.socket, settings.tcp, settings.connect_timeout, settings.scan_timeout)

    @property
    def address(self) -> str:
        return f"{self.tcp[0]}:{self.tcp[1]}" if self.tcp else str(self.socket)

    async def _connect(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        sock: socket.socket | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.tcp is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.setblocking(False)
                    await loop.sock_connect(sock, str(self.socket))
                    return sock
                infos = await loop.getaddrinfo(*self.tcp, type=socket.SOCK_STREAM)
                family, kind, proto, _, address = infos[0]
                sock = socket.socket(family, kind, proto)
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
                return sock
        except TimeoutError as exc:
            _close(sock)
            raise ClamdError(
                f"clamd at {self.address}: no connection within {self.connect_timeout}s"
            ) from exc
        except OSError as exc:
            _close(sock)
            raise ClamdError(f"clamd at {self.address}: {exc.strerror or exc}") from exc

    async def command(self, name: str) -> str:
        """A short command (``PING``, ``VERSION``): its answer."""
        loop = asyncio.get_running_loop()
        sock = await self._connect()
        try:
            async with asyncio.timeout(self.scan_timeout):
                await loop.sock_sendall(sock, b"z" + name.encode("ascii") + b"\0")
                return (await _read_reply(sock)).rstrip(b"\0").decode("utf-8", "replace")
        except TimeoutError as exc:
            raise ClamdError(f"clamd at {self.address}: no answer to {name}") from exc
        except OSError as exc:
            raise ClamdError(f"clamd at {self.address}: {exc}") from exc
        finally:
            sock.close()

    async def instream(self, data: bytes) -> str | None:
        """Scan ``data``: the signature found, or None. Raises ``StreamTooBig`` when clamd
        refuses the size, ``ClamdError`` when it cannot be reached, is slow or fails."""
        sock = await self._connect()
        try:
            async with asyncio.timeout(self.scan_timeout):
                return await self._instream(sock, data)
        except TimeoutError as exc:
            raise ClamdError(
                f"clamd at {self.address}: no answer within {self.scan_timeout}s"
            ) from exc
        finally:
            sock.close()

    async def _instream(self, sock: socket.socket, data: bytes) -> str | None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        try:
            await loop.sock_sendall(sock, b"zINSTREAM\0")
            for start in range(0, len(view), CHUNK_SIZE):
                chunk = view[start : start + CHUNK_SIZE]
                await loop.sock_sendall(sock, struct.pack(">I", len(chunk)))
                await loop.sock_sendall(sock, chunk)
            await loop.sock_sendall(sock, struct.pack(">I", 0))
        except OSError as exc:
            # clamd answers and hangs up mid-stream when the stream is over its limit: its
            # answer says why.
            try:
                reply = await _read_reply(sock)
            except (ClamdError, OSError):
                raise ClamdError(f"clamd at {self.address}: {exc}") from exc
            return parse_reply(reply)
        try:
            return parse_reply(await _read_reply(sock))
        except OSError as exc:
            raise ClamdError(f"clamd at {self.address}: {exc}") from exc


async def _read_reply(sock: socket.socket) -> bytes:
    """clamd's answer up to its terminating NUL (or up to its hang-up)."""
    loop = asyncio.get_running_loop()
    reply = b""
    while b"\0" not in reply:
        if len(reply) > REPLY_LIMIT:
            raise ClamdError("clamd's answer is too long")
        data = await loop.sock_recv(sock, 4096)
        if not data:
            if reply.strip():
                return reply
            raise ClamdError("clamd closed the connection without an answer")
        reply += data
    return reply.split(b"\0", 1)[0]


def _close(sock: socket.socket | None) -> None:
    if sock is not None:
        sock.close()


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB" if n >= 1024 * 1024 else f"{n / 1024:.1f} KiB"


class ClamAVCheck:
    """Streams the raw message and every attachment (a part with a filename or a non-text type)
    to clamd, at most ``max_connections`` at a time. A signature found is ``CLAMAV_VIRUS``."""

    name = "clamav"

    def __init__(self, settings: ClamAVSettings) -> None:
        # One bound for the whole process, whatever the domain: clamd's threads are shared.
        self.max_connections = settings.max_connections
        self._semaphore: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _limit(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._loop is not loop:  # a new loop (offline runs, tests)
            self._semaphore, self._loop = asyncio.Semaphore(self.max_connections), loop
        return self._semaphore

    async def check(self, message: ParsedMessage) -> list[Finding]:
        settings = message.policy.clamav
        if not settings.enabled:
            return [self._finding(message, "CLAMAV_DISABLED", "not virus-scanned")]
        client = Clamd.from_settings(settings)
        targets = [("message", message.raw)]
        for number, part in enumerate(message.parts, start=1):
            if part.payload and (part.filename or not part.content_type.startswith("text/")):
                targets.append(
                    (part.filename or f"part {number} ({part.content_type})", part.payload)
                )

        findings: list[Finding] = []
        to_scan: list[tuple[str, bytes]] = []
        for label, data in targets:
            if len(data) > settings.max_stream_bytes:
                findings.append(self._too_big(message, label, len(data), settings.max_stream_bytes))
            else:
                to_scan.append((label, data))

        limit = self._limit()

        async def scan(data: bytes) -> str | None:
            async with limit:
                return await client.instream(data)

        tasks = [asyncio.create_task(scan(data)) for _, data in to_scan]
        budget = message.policy.check_timeout * BUDGET_SHARE
        try:
            done, _ = await asyncio.wait(tasks, timeout=budget) if tasks else (set(), set())
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        signatures: dict[str, None] = {}  # ordered, without repeats
        errors: list[ClamdError] = []
        for (label, data), task in zip(to_scan, tasks, strict=True):
            if task not in done:
                errors.append(
                    ClamdError(f"clamd at {client.address}: scans not done in {budget:.1f}s")
                )
                continue
            exc = task.exception()
            if isinstance(exc, StreamTooBig):  # clamd's StreamMaxLength is below ours
                findings.append(self._too_big(message, label, len(data), None))
            elif isinstance(exc, ClamdError):
                errors.append(exc)
            elif exc is not None:
                raise exc  # a bug, not an unavailable engine: never pass mail because of it
            elif (signature := task.result()) is not None:
                signatures[signature] = None

        viruses = [self._finding(message, "CLAMAV_VIRUS", signature) for signature in signatures]
        if errors:
            if viruses:  # the verdict is virus whatever the rest says: no need to retry
                log.warning("%s: clamd failed on some parts: %s", message.message_id, errors[0])
            elif settings.fail_closed:
                raise errors[0]
            else:
                log.warning(
                    "%s: %s; passing it on NOT virus-scanned (fail_closed is off)",
                    message.message_id,
                    errors[0],
                )
                findings.append(self._finding(message, "CLAMAV_UNAVAILABLE", str(errors[0])[:200]))
        return viruses + findings

    def _finding(self, message: ParsedMessage, symbol: str, detail: str) -> Finding:
        return message.policy.symbol_table.finding(self.name, symbol, detail)

    def _too_big(self, message: ParsedMessage, label: str, size: int, limit: int | None) -> Finding:
        over = (
            f"over max_stream_bytes ({_size(limit)})" if limit else "over clamd's StreamMaxLength"
        )
        return self._finding(
            message,
            "CLAMAV_TOO_BIG",
            f"{label[:80]}: {_size(size)}, {over}: not scanned",
        )


def clamav_checks(settings: Settings) -> tuple[ClamAVCheck, ...]:
    """The ClamAV check when enabled globally or for some domain; otherwise none, with a
    warning at start: mail is not virus-scanned."""
    default = settings.scanner.clamav
    enabled_for = [d for d in settings.domains if settings.scanner_policy(d).clamav.enabled]
    disabled_for = sorted(set(settings.domains) - set(enabled_for))
    if not default.enabled and not enabled_for:
        log.warning("ClamAV disabled: mail is not virus-scanned")
        return ()
    if not default.enabled:
        log.warning(
            "ClamAV disabled except for %s: other mail is not virus-scanned",
            ", ".join(sorted(enabled_for)),
        )
    elif disabled_for:
        log.warning(
            "ClamAV disabled for %s: its mail is not virus-scanned", ", ".join(disabled_for)
        )
    return (ClamAVCheck(default),)
