"""Scanner checks: small named units that each look at a message and return findings.

A check never decides a verdict and never mutates shared state; it reports what it saw. Adding
a check means writing a class here (or in a module of its own) and adding it to ``CHECKS``.
Engines still to come (ClamAV, a statistical classifier, SPF/DKIM/DMARC) are checks too: an
async ``check`` lets them wait on a socket or DNS without blocking the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import default as default_policy
from typing import Protocol

from moat.model import Category, Finding

log = logging.getLogger(__name__)

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
GTUBE = rb"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@dataclass(frozen=True)
class ParsedMessage:
    """A message as the checks see it: raw bytes, the parsed tree, and every leaf part's
    payload decoded once (base64 and quoted-printable undone)."""

    message_id: str
    raw: bytes
    message: EmailMessage
    decoded_parts: tuple[bytes, ...]


def parse(message_id: str, raw: bytes) -> ParsedMessage:
    """Parse with the modern email policy; never raises on malformed MIME (the parser records
    defects instead), so every message reaches the checks."""
    # typeshed types the default policy for EmailMessage but BytesParser for Message.
    message = BytesParser(policy=default_policy).parsebytes(raw)  # type: ignore[arg-type]
    assert isinstance(message, EmailMessage)
    parts: list[bytes] = []
    for part in message.walk():
        if part.is_multipart():
            continue
        parts.append(_decoded_payload(part))
    return ParsedMessage(message_id, raw, message, tuple(parts))


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


def _contains(message: ParsedMessage, needle: bytes) -> bool:
    return needle in message.raw or any(needle in part for part in message.decoded_parts)


class EicarCheck:
    """The EICAR anti-virus test file, in the body or any attachment after decoding."""

    name = "eicar"

    async def check(self, message: ParsedMessage) -> list[Finding]:
        if _contains(message, EICAR):
            return [
                Finding(
                    check=self.name,
                    symbol="EICAR_TEST_FILE",
                    category=Category.VIRUS,
                    score=100.0,
                    detail="EICAR anti-virus test file",
                )
            ]
        return []


class GtubeCheck:
    """GTUBE, the generic test for unsolicited bulk email."""

    name = "gtube"

    async def check(self, message: ParsedMessage) -> list[Finding]:
        if _contains(message, GTUBE):
            return [
                Finding(
                    check=self.name,
                    symbol="GTUBE",
                    category=Category.SPAM,
                    score=1000.0,
                    detail="GTUBE spam test string",
                )
            ]
        return []


CHECKS: tuple[Check, ...] = (EicarCheck(), GtubeCheck())


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
