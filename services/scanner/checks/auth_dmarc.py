"""DMARC (RFC 7489) pieces: domain names, organisational domains, policy records, alignment.

The organisational domain comes from the Public Suffix List that ``publicsuffixlist`` ships
in its package: it is read from disk once, never fetched.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from publicsuffixlist import PublicSuffixList

Policy = Literal["none", "quarantine", "reject"]
_POLICIES: tuple[Policy, ...] = ("none", "quarantine", "reject")
_LABEL = re.compile(r"[!-~]{1,63}")  # printable ASCII, no space; dnspython escapes the rest


def dns_name(name: str) -> str | None:
    """``name`` lowercased, without the final dot, in ASCII (IDNA) — or None when it is no
    name worth asking DNS about (empty labels, too long, control characters). Names built from
    what a sender wrote (DKIM selectors, SPF macros) go through here, so a crafted name is
    "no such name", never a DNS error that would read as temperror."""
    name = name.strip().rstrip(".").lower()
    if not name:
        return None
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except (UnicodeError, ValueError):
            return None
    if len(name) > 253 or "\\" in name:
        return None
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return None
    return name


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def load_public_suffixes() -> None:
    """Read the list now (about 0.1 s), at start-up rather than in the first scan."""
    _psl()


@lru_cache(maxsize=4096)
def org_domain(domain: str) -> str:
    """The organisational domain: one label below the public suffix (RFC 7489 3.2)."""
    return _psl().privatesuffix(domain) or domain


def aligned(identifier: str, from_domain: str, mode: str) -> bool:
    """Strict: the same name; relaxed: the same organisational domain."""
    if mode == "s":
        return identifier == from_domain
    return org_domain(identifier) == org_domain(from_domain)


@dataclass(frozen=True)
class DmarcRecord:
    p: Policy
    sp: Policy
    adkim: str  # "r" or "s"
    aspf: str
    pct: int


def parse_record(text: str) -> DmarcRecord | None:
    """A ``v=DMARC1`` record, or None when ``text`` is not one. An unknown or missing ``p``
    reads as ``none`` (monitoring), never as a stricter policy than the domain wrote."""
    tags: dict[str, str] = {}
    for index, part in enumerate(text.split(";")):
        key, sep, value = part.partition("=")
        key, value = key.strip().lower(), value.strip()
        if index == 0:
            if key != "v" or not sep or value != "DMARC1":
                return None
            continue
        if key and sep and key not in tags:
            tags[key] = value
    p = _policy(tags.get("p"), "none")
    try:
        pct = min(100, max(0, int(tags.get("pct", "100"))))
    except ValueError:
        pct = 100
    return DmarcRecord(
        p=p,
        sp=_policy(tags.get("sp"), p),
        adkim="s" if tags.get("adkim", "r").lower() == "s" else "r",
        aspf="s" if tags.get("aspf", "r").lower() == "s" else "r",
        pct=pct,
    )


def _policy(value: str | None, default: Policy) -> Policy:
    value = (value or "").lower()
    for policy in _POLICIES:
        if value == policy:
            return policy
    return default


def select_record(texts: list[str]) -> DmarcRecord | None:
    """The one DMARC record among a name's TXT records; none, or several, mean no policy."""
    records = [record for record in map(parse_record, texts) if record is not None]
    return records[0] if len(records) == 1 else None


def disposition(policy: Policy, pct: int, message_id: str) -> Policy:
    """What to apply to a failing message: the policy, or for the ``100 - pct`` per cent not
    sampled the next milder one (RFC 7489 6.6.4). Sampling hashes our message id, so a retried
    message is judged the same way."""
    if pct >= 100 or zlib.crc32(message_id.encode()) % 100 < pct:
        return policy
    return "quarantine" if policy == "reject" else "none"
