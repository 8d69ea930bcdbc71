"""What every check shares: the message as checks see it, the ``Check`` interface, and the
runner that turns a check's failure or timeout into a finding.

A check is a small named unit: ``async check(message) -> list[Finding]``. It never decides a
verdict and never mutates shared state; it reports what it saw, each finding with a score.
Async lets engines wait on a socket (clamd) or DNS without blocking the event loop; CPU-heavy
work belongs in ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from email.feedparser import BytesFeedParser
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from typing import Protocol

from moat.model import Category, Finding
from moat.model import MessageEnvelope as Envelope
from moat.settings import ScannerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Part:
    """One leaf MIME part, its payload decoded once (base64 and quoted-printable undone)."""

    content_type: str
    filename: str | None
    payload: bytes
    part: Message


@dataclass(frozen=True)
class ParsedMessage:
    """A message as the checks see it. ``policy`` is the scanner policy in force for it: the
    global one with the overrides of the protected domain ``domain`` (its first recipient's)."""

    message_id: str
    raw: bytes
    message: Message
    parts: tuple[Part, ...]
    envelope: Envelope = field(default_factory=Envelope)
    policy: ScannerSettings = field(default_factory=ScannerSettings)
    domain: str | None = None
    # MIME nested deeper than ``policy.attachments.max_mime_depth``: the parse stopped there,
    # ``message`` is the top-level header over an unparsed body and ``parts`` is empty, so no
    # check can descend into it. The attachments check reports it (MIME_UNSCANNABLE: policy).
    too_deep: bool = False

    @property
    def decoded_parts(self) -> tuple[bytes, ...]:
        return tuple(part.payload for part in self.parts)


def parse(
    message_id: str,
    raw: bytes,
    envelope: Envelope | None = None,
    policy: ScannerSettings | None = None,
    domain: str | None = None,
) -> ParsedMessage:
    """Parse a message; never raises on malformed MIME (the parser records defects instead), so
    every message reaches the checks.

    The parser runs with the ``compat32`` policy, whose headers are plain strings: the modern
    ``policy.default`` parses every header it touches into objects, which cost 12 ms per
    message on average over the SpamAssassin corpus against 0.3 ms, and several seconds on a
    single hostile ``Content-Type`` (a denial of service). Checks read raw header values
    (``raw_items``) and decode what they need.

    MIME deeper than the policy's ``max_mime_depth`` is not parsed (see ``too_deep``)."""
    policy = policy or ScannerSettings()
    parser = _DepthLimitedParser(policy.attachments.max_mime_depth)
    too_deep = False
    try:
        parser.feed(raw)
        message = parser.close()
    except MimeTooDeep:
        too_deep = True
        message = BytesParser(policy=compat32).parsebytes(raw, headersonly=True)
    parts: list[Part] = []
    if not too_deep:
        for part, _ in walk(message):
            if part.is_multipart():
                continue
            parts.append(Part(_content_type(part), _filename(part), _decoded_payload(part), part))
    return ParsedMessage(
        message_id,
        raw,
        message,
        tuple(parts),
        envelope or Envelope(),
        policy,
        domain,
        too_deep,
    )


class MimeTooDeep(Exception):
    """The message nests MIME entities deeper than its parse may go."""


class _DepthLimitedParser(BytesFeedParser):
    """email's parser (``compat32``), stopped at a MIME nesting depth.

    The parser opens each nested entity (a multipart's part, an attached message, a
    delivery-status block) in a generator one inside the other: at about 980 levels it raised
    RecursionError itself, so the tree cannot be parsed first and measured afterwards. The
    entities open at once are counted as the parser opens and closes them, through its own
    two private hooks (not public API: tests/unit/test_checks.py pins what this relies on, and
    fails on a Python whose parser no longer calls them), and one too many ends the parse."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(policy=compat32)
        self._max_depth = max_depth
        self._depth = 0

    def _new_message(self) -> None:
        if self._depth >= self._max_depth:
            raise MimeTooDeep(f"MIME nesting deeper than {self._max_depth}")
        self._depth += 1
        super()._new_message()  # type: ignore[misc]

    def _pop_message(self) -> Message:
        self._depth -= 1
        popped: Message = super()._pop_message()  # type: ignore[misc]
        return popped


def walk(message: Message) -> Iterator[tuple[Message, int]]:
    """Every entity of a parsed message with its depth (the message itself is 1), in the order
    of ``Message.walk()``, but without its recursion: nothing walking a tree recurses per level."""
    stack: list[tuple[Message, int]] = [(message, 1)]
    while stack:
        entity, depth = stack.pop()
        yield entity, depth
        payload = entity.get_payload() if entity.is_multipart() else None
        if isinstance(payload, list):
            stack.extend(
                (child, depth + 1) for child in reversed(payload) if isinstance(child, Message)
            )


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:  # a header so broken the parser's defaults fail too
        return "application/octet-stream"


def _filename(part: Message) -> str | None:
    """The attachment's name, RFC 2231 and RFC 2047 encodings undone."""
    try:
        name = part.get_filename()
    except Exception:
        return None
    if not name:
        return None
    name = str(name)
    if "=?" in name:
        with contextlib.suppress(Exception):  # a broken encoded-word: keep it as sent
            name = str(make_header(decode_header(name)))
    return name


def _decoded_payload(part: Message) -> bytes:
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # a broken encoding: fall back to the part as it was sent
        payload = None
    if isinstance(payload, bytes):
        return payload
    raw = part.get_payload()
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


class Check(Protocol):
    name: str

    async def check(self, message: ParsedMessage) -> list[Finding]: ...


def validate_registry(checks: Sequence[Check]) -> None:
    names = [check.name for check in checks]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"duplicate check names: {', '.join(duplicates)}")


async def run_checks(
    checks: Sequence[Check], message: ParsedMessage, timeout: float
) -> list[Finding]:
    """Run every check concurrently. A check that raises or overruns its timeout yields a
    ``<NAME>_FAIL`` finding of category failure: a failure is reported, never read as clean.
    A check that finds nothing is recorded too, so every verdict shows what was looked at."""

    async def one(check: Check) -> list[Finding]:
        started = time.perf_counter()
        try:
            findings = await asyncio.wait_for(check.check(message), timeout)
        except Exception as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}"
            log.warning("check %s failed on %s: %r", check.name, message.message_id, exc)
            findings = [
                Finding(
                    check=check.name,
                    symbol=f"{check.name.upper()}_FAIL",
                    category=Category.FAILURE,
                    detail=reason,
                )
            ]
        elapsed_ms = (time.perf_counter() - started) * 1000
        if not findings:
            findings = [
                Finding(
                    check=check.name,
                    symbol=f"{check.name.upper()}_NONE",
                    category=Category.INFO,
                    detail="nothing found",
                )
            ]
        return [
            finding.model_copy(update={"elapsed_ms": round(elapsed_ms, 3)}) for finding in findings
        ]

    results = await asyncio.gather(*(one(check) for check in checks))
    return [finding for findings in results for finding in findings]
