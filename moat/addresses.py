"""Mail addresses: what counts as one. Shared by ingress (MAIL, RCPT) and the API (tokens,
sender lists)."""

from __future__ import annotations

import re

# What aiosmtpd's lenient parser lets through but no mailbox (RFC 5321 4.1.2) may contain.
_NOT_IN_MAILBOX = re.compile(r"[\s<>()\[\]\\,;:\x00-\x1f\x7f]")


def is_mailbox(address: str) -> bool:
    """A plausible ``local@domain`` (UTF-8 allowed, RFC 6531; quoted local parts too)."""
    if not address.isascii():
        try:
            address.encode("utf-8")  # aiosmtpd keeps bytes that are not UTF-8 as surrogates
        except UnicodeEncodeError:
            return False
    local, at, domain = address.rpartition("@")
    if not (at and local and domain) or "." not in domain.strip("."):
        return False
    if _NOT_IN_MAILBOX.search(domain):
        return False
    quoted = len(local) >= 2 and local[0] == local[-1] == '"'
    return quoted or not _NOT_IN_MAILBOX.search(local)
