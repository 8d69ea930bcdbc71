"""What a delivery attempt means for each recipient, and for the message: the outcome rules,
pure and in one place (the SMTP session only reports what happened; the worker only records it;
the DSN builder only writes it down).

| what the next hop did                           | recipient | RFC 3463 status        |
| ----------------------------------------------- | --------- | ---------------------- |
| 2xx reply                                       | delivered | its own, else 2.0.0    |
| 4xx reply (a 421 greeting too)                  | deferred  | its own, else 4.0.0    |
| 5xx reply to MAIL, RCPT or DATA                 | bounced   | its own, else 5.0.0    |
| 5xx greeting (Postfix: smtp_skip_5xx_greeting)  | deferred  | 4.4.0                  |
| a reply that is not 2xx, 4xx or 5xx             | deferred  | 4.5.0 (protocol)       |
| no route configured for the domain              | deferred  | 4.4.0                  |
| the next hop's name does not resolve            | deferred  | 4.4.3                  |
| connection refused, or no answer in time        | deferred  | 4.4.1                  |
| connection reset or closed mid-conversation     | deferred  | 4.4.2                  |
| closed after the final dot, before the reply    | deferred  | 4.4.2 (may have been   |
|                                                 |           | delivered: RFC 5321    |
|                                                 |           | 6.1 says send again)   |
| TLS handshake failed                            | deferred  | 4.7.0                  |
| any of the deferred ones past max_lifetime      | bounced   | 5.4.7 (time expired)   |

Nothing a next hop does fails a message: only a bug can (``failed`` means dead-lettered).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from moat.model import MessageStatus, RecipientStatus


class NoReply(StrEnum):
    """Why no SMTP reply came from the next hop."""

    NO_ROUTE = "no_route"
    DNS = "dns"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    RESET = "reset"
    DROPPED_AFTER_DATA = "dropped_after_data"
    TLS = "tls"


NO_REPLY_STATUS: dict[NoReply, str] = {
    NoReply.NO_ROUTE: "4.4.0",
    NoReply.DNS: "4.4.3",
    NoReply.REFUSED: "4.4.1",
    NoReply.TIMEOUT: "4.4.1",
    NoReply.RESET: "4.4.2",
    NoReply.DROPPED_AFTER_DATA: "4.4.2",
    NoReply.TLS: "4.7.0",
}

EXPIRED_STATUS = "5.4.7"  # RFC 3463: delivery time expired


@dataclass(frozen=True)
class Reply:
    """What came back for a recipient: an SMTP reply, or why none came."""

    code: int | None  # None: no reply at all (see ``failure``)
    text: str
    failure: NoReply | None = None
    greeting: bool = False  # the reply was the server's greeting (or its EHLO answer)

    def __str__(self) -> str:
        return f"{self.code} {self.text}" if self.code is not None else self.text


@dataclass(frozen=True)
class Outcome:
    status: RecipientStatus  # delivered, deferred or bounced
    status_code: str  # RFC 3463 status, for the record and for a DSN
    reply: str  # what the recipient's record (and a DSN) says happened


# re.ASCII: \d would otherwise accept any Unicode digit, and a status has to be ASCII.
_ENHANCED_AT_START = re.compile(
    r"\s*(?:\d{3}[ -])?([245])\.(\d{1,3})\.(\d{1,3})(?![\w.])", re.ASCII
)


def enhanced_status(code: int | None, text: str) -> str:
    """The RFC 3463 status of a reply: the enhanced code at the start of `text` if present and
    consistent with the class of `code` (2/4/5), else f"{class}.0.0"; for code None (no reply,
    e.g. connection failure) "4.4.1".

    `text` may be the reply's text alone or the whole reply line (with `code` in front). A code
    whose class is not 2, 4 or 5 is a protocol violation by the server; it gets "4.5.0" (other
    protocol status, transient) because "1.0.0" or "3.0.0" are not valid statuses, and a broken
    exchange is worth retrying rather than bouncing at once.
    """
    if code is None:
        return "4.4.1"
    reply_class = code // 100
    if reply_class not in (2, 4, 5):
        return "4.5.0"
    match = _ENHANCED_AT_START.match(text)
    if match is not None and int(match.group(1)) == reply_class:
        return ".".join(match.groups())
    return f"{reply_class}.0.0"


def judge(reply: Reply, *, expired: bool) -> Outcome:
    """The recipient's outcome from what the next hop did; ``expired``: the message would be
    past ``delivery.max_lifetime`` at its next attempt, so a deferral becomes a bounce."""
    text = str(reply)
    if reply.code is None:
        status, code = (
            RecipientStatus.DEFERRED,
            NO_REPLY_STATUS.get(reply.failure or NoReply.RESET, "4.4.2"),
        )
    elif 200 <= reply.code < 300:
        return Outcome(RecipientStatus.DELIVERED, enhanced_status(reply.code, reply.text), text)
    elif 500 <= reply.code < 600 and not reply.greeting:
        return Outcome(RecipientStatus.BOUNCED, enhanced_status(reply.code, reply.text), text)
    elif 500 <= reply.code < 600:
        # A server that greets with 5xx refuses to talk at all; like Postfix (which would try
        # the next MX) we try again later rather than bounce on a hop's bad moment.
        status, code = RecipientStatus.DEFERRED, "4.4.0"
    else:
        status, code = RecipientStatus.DEFERRED, enhanced_status(reply.code, reply.text)
    if expired:
        return Outcome(
            RecipientStatus.BOUNCED, EXPIRED_STATUS, f"message lifetime exceeded; last: {text}"
        )
    return Outcome(status, code, text)


def dsn_status(outcome: Outcome) -> str:
    """A DSN reports a failure: its status class is 5 even when the last reply was a 4xx."""
    code = outcome.status_code
    return "5" + code[1:] if code.startswith("4") else code


def final_status(statuses: Sequence[RecipientStatus]) -> MessageStatus:
    """The message's state from its recipients' states. Recipients deleted or purged from
    quarantine do not count; while some are still held in quarantine (a partial release) and
    delivery is done with the others, the message is back in quarantine."""
    if any(status in (RecipientStatus.PENDING, RecipientStatus.DEFERRED) for status in statuses):
        return MessageStatus.DEFERRED
    if RecipientStatus.QUARANTINED in statuses:
        return MessageStatus.QUARANTINED
    relevant = [s for s in statuses if s in _DELIVERY_STATES]
    if all(status == RecipientStatus.DELIVERED for status in relevant):
        return MessageStatus.DELIVERED
    if all(status == RecipientStatus.BOUNCED for status in relevant):
        return MessageStatus.BOUNCED
    return MessageStatus.PARTIALLY_DELIVERED


_DELIVERY_STATES = frozenset(
    {
        RecipientStatus.PENDING,
        RecipientStatus.DEFERRED,
        RecipientStatus.DELIVERED,
        RecipientStatus.BOUNCED,
    }
)
