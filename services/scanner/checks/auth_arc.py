"""ARC (RFC 8617) chain validation with dkimpy, keys looked up beforehand (as for DKIM).

A mailing list or forwarder that changes a message breaks its DKIM signature and SPF, so the
author domain's DMARC fails at the next hop. If that intermediary sealed the message with ARC,
recording that authentication passed when the message reached it, and the chain validates,
a receiver that trusts the intermediary may override the DMARC failure (RFC 8617 7.2.1).

``sealers`` (CPU: thread) lists the keys to fetch, the check fetches them with the async
resolver, ``validate`` (CPU: thread) runs dkimpy on them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import dkim  # type: ignore[import-untyped]
import dkim.util  # type: ignore[import-untyped]

from services.scanner.checks.auth_dkim import Key
from services.scanner.checks.auth_dmarc import dns_name, org_domain

log = logging.getLogger(__name__)

_QUIET = logging.getLogger(__name__ + ".dkimpy")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False

# Any ARC header field: a signature or results without a seal is a broken chain, not none.
SEALED = re.compile(rb"(?im)^arc-(?:seal|message-signature|authentication-results):")
MAX_INSTANCES = 50  # RFC 8617 4.2.1: i= is at most 50
_RESULT = re.compile(r"\b(spf|dkim|dmarc)\s*=\s*([a-z]+)", re.I)


@dataclass(frozen=True)
class ArcResult:
    result: str  # pass, fail (dkimpy's cv; "none" chains give no result at all)
    sealer: str  # d= of the newest ARC-Seal: the hop that handed the message on
    trusted: bool  # the chain passed, the sealer is trusted and it saw authentication pass
    detail: str


def _tags(value: bytes) -> dict[bytes, bytes]:
    try:
        return dict(dkim.util.parse_tag_value(re.sub(rb"\s+", b"", value)))
    except Exception:
        return {}


def _fields(raw: bytes, name: bytes) -> list[bytes]:
    try:
        headers, _body = dkim.rfc822_parse(raw)
    except Exception:
        return []
    return [value for field, value in headers if field.lower() == name]


def sealers(raw: bytes) -> list[str]:
    """The DNS names of every key an ARC set of the message names (seals and signatures)."""
    names: list[str] = []
    for field in (b"arc-seal", b"arc-message-signature"):
        for value in _fields(raw, field)[: MAX_INSTANCES * 2]:
            tags = _tags(value)
            domain = tags.get(b"d", b"").decode("ascii", "replace").lower()
            selector = tags.get(b"s", b"").decode("ascii", "replace")
            name = dns_name(f"{selector}._domainkey.{domain}") if domain and selector else None
            if name is not None and name not in names:
                names.append(name)
    return names


def validate(
    raw: bytes, keys: dict[str, Key], trusted: frozenset[str], min_key_bits: int
) -> ArcResult | None:
    """The chain's validation (None: the message has no ARC set), and whether to believe it:
    it passed, its newest sealer's organisational domain is in ``trusted``, and that sealer's
    ARC-Authentication-Results says DMARC passed (or, without a DMARC result, DKIM or SPF)."""

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        key = keys.get(name.decode("ascii", "replace").lower().rstrip("."))
        return key.encode() if isinstance(key, str) else None

    try:
        cv, _results, comment = dkim.ARC(raw, logger=_QUIET, minkey=min_key_bits).verify(
            dnsfunc=dnsfunc
        )
    except Exception as exc:  # dkimpy on input it did not expect
        log.debug("ARC: %r", exc)
        cv, comment = dkim.CV_Fail, "unreadable ARC set"
    if cv == dkim.CV_None:
        if not _fields(raw, b"arc-seal"):
            if not any(
                _fields(raw, f) for f in (b"arc-message-signature", b"arc-authentication-results")
            ):
                return None
            return ArcResult("fail", "", False, "ARC fail: an ARC set without ARC-Seal")
        return None
    seals = [_tags(value) for value in _fields(raw, b"arc-seal")]
    newest = max(seals, key=lambda t: _instance(t.get(b"i", b"")), default={})
    sealer = newest.get(b"d", b"").decode("ascii", "replace").lower().rstrip(".")
    instance = _instance(newest.get(b"i", b""))
    if cv != dkim.CV_Pass:
        return ArcResult("fail", sealer, False, f"ARC fail i={instance} d={sealer}: {comment}")
    said = _said_pass(raw, instance)
    believed = bool(sealer) and org_domain(sealer) in trusted and said
    detail = f"ARC pass i={instance} d={sealer}" + (
        ", authentication passed there" if said else ", authentication did not pass there"
    )
    return ArcResult("pass", sealer, believed, detail)


def _instance(value: bytes) -> int:
    try:
        return int(value.strip())
    except ValueError:
        return 0


def _said_pass(raw: bytes, instance: int) -> bool:
    for value in _fields(raw, b"arc-authentication-results"):
        text = value.decode("utf-8", "replace")
        number = re.match(r"\s*i\s*=\s*(\d+)", text)
        if number is None or int(number.group(1)) != instance:
            continue
        results: dict[str, str] = {m.lower(): r.lower() for m, r in _RESULT.findall(text)}
        if "dmarc" in results:
            return results["dmarc"] == "pass"
        return results.get("dkim") == "pass" or results.get("spf") == "pass"
    return False
