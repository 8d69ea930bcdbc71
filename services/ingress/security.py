"""Ingress rules about the channel and the client rather than the message: TLS (what our
``Received:`` line says of it, who must use it), and who may relay (docs/ingress.md)."""

from __future__ import annotations

import ipaddress
import ssl
from typing import Any

from aiosmtpd.smtp import Envelope, Session

from moat.settings import Settings


def tls_of(server: Any) -> ssl.SSLObject | None:
    """The TLS of the session ``server`` (aiosmtpd's protocol) runs, after STARTTLS or on an
    implicit-TLS listener; None in plain text."""
    transport = getattr(server, "transport", None)
    if transport is None:
        return None
    ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
    return ssl_object


def tls_clause(ssl_object: ssl.SSLObject | None) -> str:
    """Postfix's account of the TLS in a ``Received:`` line: ``(using TLSv1.3 with cipher
    TLS_AES_256_GCM_SHA384 (256/256 bits))``; "" in plain text."""
    cipher = ssl_object.cipher() if ssl_object is not None else None
    if ssl_object is None or cipher is None:
        return ""
    name, _, bits = cipher
    return f"(using {ssl_object.version()} with cipher {name} ({bits}/{bits} bits))"


def protocol_name(session: Session, envelope: Envelope, tls: bool) -> str:
    """The ``with`` of our ``Received:`` line: SMTP or ESMTP, UTF8SMTP when SMTPUTF8 was used
    (RFC 6531), then S for TLS and A for an authenticated client (RFC 3848)."""
    if envelope.smtp_utf8:
        base = "UTF8SMTP"
    elif session.extended_smtp:
        base = "ESMTP"
    else:
        return "SMTP"  # HELO: neither TLS nor AUTH can have been negotiated
    return base + ("S" if tls else "") + ("A" if session.authenticated else "")


def submitted_by(session: Session) -> str | None:
    """The submission user the session authenticated as, None if it did not."""
    return str(session.auth_data) if session.authenticated and session.auth_data else None


def may_relay(settings: Settings, session: Session, client: str) -> bool:
    """Whether this client may send to domains we do not protect: an authenticated
    submission user, or a client in ``smtp.trusted_networks``."""
    return bool(session.authenticated) or settings.smtp.trusts(client)


def must_use_tls(settings: Settings, domain: str, sender: str, client: str) -> bool:
    """Whether the protected ``domain`` wants mail from this sender or client network over TLS
    only (``domains.<name>.require_tls``)."""
    protected = settings.relay_for(domain)
    if protected is None:
        return False
    rule = protected.require_tls
    if rule.senders and _sender_listed(sender.lower(), rule.senders):
        return True
    if rule.networks and client:
        try:
            ip = ipaddress.ip_address(client)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(n, strict=False) for n in rule.networks)
    return False


def _sender_listed(sender: str, listed: list[str]) -> bool:
    if "*" in listed:
        return True
    if not sender:  # the null sender: only "*" names it
        return False
    domain = sender.rpartition("@")[2].rstrip(".")
    for entry in listed:
        if "@" in entry:
            if entry == sender:
                return True
        elif domain == entry or domain.endswith("." + entry):
            return True
    return False
