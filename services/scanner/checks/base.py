"""What every check shares: the message as checks see it, the ``Check`` interface, and the
runner that turns a check's failure or timeout into a finding.

A check is a small named unit: ``async check(message) -> list[Finding]``. It never decides a
verdict and never mutates shared state; it reports what it saw, each finding with a score.
Async lets engines wait on a socket (clamd) or DNS without blocking the event loop; CPU-heavy
work belongs in ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import Message
from typing import Protocol

from moat import metrics
from moat.mime import content_type, decoded_payload, filename, parse_limited, walk
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
    message, too_deep = parse_limited(raw, policy.attachments.max_mime_depth)
    parts: list[Part] = []
    if not too_deep:
        for part, _ in walk(message):
            if part.is_multipart():
                continue
            parts.append(Part(content_type(part), filename(part), decoded_payload(part), part))
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
            metrics.get().check_failed(check.name, timed_out=isinstance(exc, TimeoutError))
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
        metrics.get().check_duration.labels(check.name).observe(elapsed_ms / 1000)
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
