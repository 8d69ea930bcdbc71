"""DKIM (RFC 6376, RFC 8463 Ed25519) verification with dkimpy, keys looked up beforehand.

Verifying hashes the body and checks signatures: CPU work, done in a thread. dkimpy asks for
keys through a synchronous ``dnsfunc``; ours answers from the keys the check fetched with the
async resolver before, so a verifying thread never waits on the network. The steps:
``signatures`` (thread) lists what to fetch, the check fetches the keys, ``verify`` (thread).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import dkim  # type: ignore[import-untyped]
import dkim.util  # type: ignore[import-untyped]

from moat.dns import DnsError
from services.scanner.checks.auth_dmarc import dns_name

log = logging.getLogger(__name__)

# dkimpy logs every failed signature at error level: for a gateway that is ordinary traffic.
# Our own log says what matters; dkimpy's words go nowhere.
_QUIET = logging.getLogger(__name__ + ".dkimpy")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False

# dkimpy recognises a signature only under exactly this header name at the start of a line.
SIGNED = re.compile(rb"(?im)^dkim-signature:")

Key = str | DnsError | None  # the key record's text; None: no such record


@dataclass(frozen=True)
class Signature:
    index: int  # the signature's position among DKIM-Signature fields, topmost 0
    domain: str  # d=, "" when unreadable
    selector: str  # s=
    error: str = ""  # why it cannot be verified at all (malformed)

    @property
    def key_name(self) -> str | None:
        if self.error:
            return None
        return dns_name(f"{self.selector}._domainkey.{self.domain}")


@dataclass(frozen=True)
class DkimResult:
    result: str  # pass, fail, permerror, temperror
    domain: str
    selector: str
    reason: str = ""  # a fixed phrase for the Authentication-Results comment


def _text(value: Any) -> str:
    raw = value if isinstance(value, bytes) else b""
    return re.sub(rb"\s+", b"", raw).decode("ascii", "replace")


def signatures(raw: bytes, min_key_bits: int, limit: int) -> tuple[Any, list[Signature]]:
    """dkimpy's view of the message and its first ``limit`` signatures (CPU: run in a thread).
    A message dkimpy cannot read gives no verifier and one malformed "signature"."""
    try:
        verifier = dkim.DKIM(raw, logger=_QUIET, minkey=min_key_bits)
    except Exception as exc:  # dkimpy's MessageFormatError, or worse on worse input
        log.debug("DKIM cannot read the message: %r", exc)
        return None, [Signature(0, "", "", "malformed message")]
    found: list[Signature] = []
    fields = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    for index, value in enumerate(fields[:limit]):
        try:
            tags = dkim.util.parse_tag_value(value)
        except Exception:
            found.append(Signature(index, "", "", "malformed signature"))
            continue
        domain, selector = _text(tags.get(b"d")).lower(), _text(tags.get(b"s"))
        signature = Signature(index, domain, selector)
        if signature.key_name is None:
            signature = Signature(index, domain, selector, "malformed signature")
        found.append(signature)
    return verifier, found


def verify(verifier: Any, found: list[Signature], keys: dict[str, Key]) -> list[DkimResult]:
    """Each signature's result, its key taken from ``keys`` (CPU: run in a thread)."""
    return [_verify_one(verifier, signature, keys) for signature in found]


def _verify_one(verifier: Any, signature: Signature, keys: dict[str, Key]) -> DkimResult:
    def result(value: str, reason: str = "") -> DkimResult:
        return DkimResult(value, signature.domain, signature.selector, reason)

    name = signature.key_name
    if verifier is None or name is None:
        return result("permerror", signature.error or "malformed signature")
    key = keys.get(name)
    if isinstance(key, DnsError):
        return result("temperror", "key lookup failed")
    if not key:
        return result("permerror", "no key")
    record = key.encode("utf-8")

    def dnsfunc(_name: bytes, timeout: float = 5) -> bytes:
        return record

    try:
        valid = verifier.verify(signature.index, dnsfunc=dnsfunc)
    except dkim.ValidationError as exc:
        text = str(exc)
        if "body hash mismatch" in text:
            return result("fail", "body hash mismatch")
        if "x= value is past" in text:
            return result("fail", "signature expired")
        return result("permerror", "malformed signature")
    except dkim.KeyFormatError as exc:
        return result("permerror", "key too small" if "too small" in str(exc) else "bad key")
    except dkim.DKIMException:
        return result("permerror", "malformed signature")
    except Exception as exc:  # dkimpy on input it did not expect
        log.info("DKIM d=%s s=%s: %r", signature.domain, signature.selector, exc)
        return result("permerror", "malformed signature")
    if valid:
        return result("pass")
    try:  # dkimpy answers False for a key it cannot use too: tell the two apart
        dkim.evaluate_pk(name.encode(), record)
    except Exception:  # KeyFormatError: revoked (p=), unknown k=, unparsable
        return result("permerror", "bad key")
    return result("fail", "bad signature")
