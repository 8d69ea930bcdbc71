"""Every SMTP reply Moat sends, with its RFC 3463 enhanced status code, in one place."""

from __future__ import annotations

import re

OK = "250 2.0.0 Ok"
SENDER_OK = "250 2.1.0 Sender ok"
RECIPIENT_OK = "250 2.1.5 Recipient ok"
QUEUED = "250 2.0.0 Ok: queued as {message_id}"
# 554, as Postfix answers reject_unauth_destination (relay_domains_reject_code), not 550.
RELAY_DENIED = "554 5.7.1 Relay access denied: we do not accept mail for {domain}"
# A block list rule of this recipient (its own, its domain's or a global one) names the sender,
# and the policy's sender_lists.block_action is reject.
SENDER_BLOCKED = "550 5.7.1 Delivery not authorized: the recipient does not accept mail from you"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
MESSAGE_TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
LOOP_DETECTED = "554 5.4.0 Too many Received: headers, mail loop suspected"
TEMPORARY_FAILURE = "451 4.3.0 Temporary failure, please try again later"
INSUFFICIENT_STORAGE = "452 4.3.1 Insufficient system storage"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, closing transmission channel"
BAD_RECIPIENT_SYNTAX = "501 5.1.3 Bad recipient address syntax"
BAD_SENDER_SYNTAX = "501 5.1.7 Bad sender address syntax"
# Recipient verification (docs/recipient-verification.md). The same text whether the list or a
# call-out said no, and nothing of the domain's own server (its name, its reply) is passed on.
USER_UNKNOWN = "550 5.1.1 <{address}>: Recipient address rejected: User unknown"
# The domain's server answered the probe's RCPT with a 4xx (busy, greylisting): Postfix's
# unverified_recipient_defer_code, with the mailbox status code.
UNVERIFIED_DEFERRED = (
    "450 4.1.1 <{address}>: Recipient address rejected: unverified address: "
    "the domain's mail server asked us to try again later"
)
# No answer to the probe's RCPT: the server refused the connection, did not answer in time,
# or refused the probe before RCPT. RFC 3463 X.4.3, the directory (here, the server) failed.
UNVERIFIED_UNREACHABLE = (
    "451 4.4.3 <{address}>: Recipient address rejected: unverified address: "
    "cannot ask the domain's mail server now, try again later"
)
# VRFY never tells whether a user exists (RFC 5321 3.5.3; enumeration), EXPN never expands.
CANNOT_VRFY = "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"
NO_EXPN = "502 5.5.1 EXPN not available"
VRFY_SYNTAX = "501 5.5.4 Syntax: VRFY <address>"
# A non-ASCII address at MAIL or RCPT, but no SMTPUTF8 on MAIL (RFC 6531 3.4, RFC 6533 5.6.7).
SMTPUTF8_REQUIRED = "553 5.6.7 Must declare SMTPUTF8 to send unicode address"
# Session limits per client IP (docs/ingress-limits.md): Postfix's codes. The rates answer
# 450 4.7.1 and keep the session, as Postfix's smtpd does for its anvil rate limits.
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections from your address"
TOO_MANY_ERRORS = "421 4.7.0 Too many errors"
TOO_MUCH_MAIL = "450 4.7.1 Too much mail from your address, try again later"
TOO_MANY_RECIPIENTS_RATE = "450 4.7.1 Too many recipients from your address, try again later"
EARLY_TALKER = "554 5.5.0 Protocol error: you talked before the greeting"
GREYLISTED = "451 4.7.1 Greylisted: please try again in a few minutes (see RFC 6647)"

# TLS and authentication (RFC 3207, RFC 4954; Postfix's texts).
TLS_REQUIRED = "530 5.7.0 Must issue a STARTTLS command first"
AUTH_NOT_ENABLED = "503 5.5.1 Error: authentication not enabled"
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
AUTH_TOO_MANY_FAILURES = "421 4.7.0 Too many failed authentication attempts, try again later"
AUTH_IN_TRANSACTION = "503 5.5.1 Error: MAIL transaction in progress"

# aiosmtpd's own replies carry no enhanced status code, and some of its texts we improve on.
_AIOSMTPD_REWRITES: dict[str, str] = {
    "552 Error: message size exceeds fixed maximum message size": MESSAGE_TOO_BIG,
    "552 Error: Too much mail data": MESSAGE_TOO_BIG,
    "250 OK": OK,
}
# The enhanced code to add to a reply that has none, by basic reply code.
_ENHANCED_BY_CODE: dict[str, str] = {
    "221": "2.0.0",
    "250": "2.0.0",
    "252": "2.0.0",
    "421": "4.3.0",
    "451": "4.3.0",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")


def with_enhanced_code(reply: str) -> str:
    """Give a single-line reply an enhanced status code (RFC 2034) when it lacks one."""
    if reply in _AIOSMTPD_REWRITES:
        return _AIOSMTPD_REWRITES[reply]
    if _HAS_ENHANCED.match(reply) or len(reply) < 4 or reply[3] not in " -":
        return reply
    enhanced = _ENHANCED_BY_CODE.get(reply[:3])
    if enhanced is None:  # 220 greeting, 354 go-ahead: no enhanced code by RFC 2034
        return reply
    text = reply[4:].removeprefix("Error: ")
    return f"{reply[:4]}{enhanced} {text}".rstrip()
