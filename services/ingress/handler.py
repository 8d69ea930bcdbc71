"""The SMTP front door's policy: who may send what, and the durable hand-off before ``250``.

aiosmtpd's ``SMTP`` class owns the protocol (RFC 5321 state, pipelining, dot-unstuffing, line
and size limits); this handler owns every decision. ``handle_DATA`` answers ``250`` only after
the message is in the spool (fsynced), in the database and published for scanning with a
broker confirm; if any of those fails the sender gets ``451 4.3.0`` and retries later.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import ssl
import time
from email.utils import format_datetime
from typing import Any, AnyStr

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from moat import logs, metrics, replies
from moat.addresses import is_mailbox
from moat.broker import Broker
from moat.model import ScanRequest, new_message_id, utcnow
from moat.repository import NewMessage, Repository
from moat.sender_rules import CachedRules, RuleAction
from moat.settings import Settings
from moat.spool import MessageStore
from moat.topology import SCAN
from services.ingress.data import DataState, read_data
from services.ingress.limits import Greylist, LimitedSMTP, SessionLimits
from services.ingress.recipients import RecipientVerifier
from services.ingress.security import (
    may_relay,
    must_use_tls,
    protocol_name,
    submitted_by,
    tls_clause,
    tls_of,
)

log = logging.getLogger(__name__)

_RECEIVED_LINE = re.compile(rb"^received[ \t]*:", re.IGNORECASE | re.MULTILINE)
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_UNSAFE_IN_HEADER = re.compile(r"[^\x21-\x7e]")


def normalise_line_endings(data: bytes) -> bytes:
    """Every bare CR and bare LF made a CRLF, the only line ending of SMTP (RFC 5321 2.3.8).
    Readers disagree on the bare ones: Python's email parser (the scanners) and aiosmtplib
    (delivery, which rewrites them on the way out) take each for a line break, a regex anchored
    on LF or a server that wants CRLF does not. A field hidden behind one is then one line to
    some and several to others. CR CR LF is a bare CR and a CRLF, two line breaks, as the
    email parser and aiosmtplib read it."""
    crlf = data.count(b"\r\n")
    if data.count(b"\r") == crlf and data.count(b"\n") == crlf:
        return data  # nearly all mail: three scans in C and no copy, against a regex pass
    return _LINE_BREAK.sub(b"\r\n", data)


def strip_forged_headers(data: bytes, authserv_id: str) -> bytes:
    """Remove what only we may write: ``X-Moat-*`` fields, and ``Authentication-Results``
    fields naming our authserv-id (RFC 8601 section 5). Senders forge both to look vetted."""
    end = _HEADER_END.search(data)
    header_end = end.start() if end else len(data)
    # Each field with its continuation lines, line endings kept.
    fields = re.split(rb"(?<=\n)(?=[^ \t])", data[:header_end])
    ours = authserv_id.lower().encode()
    kept = [field for field in fields if not _is_ours(field, ours)]
    if len(kept) == len(fields):
        return data
    header = b"".join(kept)
    if header.endswith(b"\n"):  # the dropped field was the last: the body's CRLF ends this one
        header = header[:-2] if header.endswith(b"\r\n") else header[:-1]
    return header + data[header_end:]


def _is_ours(field: bytes, authserv_id: bytes) -> bool:
    name, _, value = field.partition(b":")
    name = name.strip().lower()
    if name.startswith(b"x-moat-"):
        return True
    return (
        name == b"authentication-results"
        and value.strip().split(b";", 1)[0].strip().lower() == authserv_id
    )


def count_received_headers(data: bytes) -> int:
    """How many ``Received:`` fields the message's header section has."""
    end = _HEADER_END.search(data)
    header = data[: end.start() + 1] if end else data
    return len(_RECEIVED_LINE.findall(header))


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
# "<local@domain>" with a dot-atom local part and a host name, then nothing or blanks and
# parameters without a comment: what nearly every client sends.
_PLAIN_ADDRESS = re.compile(
    rf"[ \t]*<({_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*)>(?:[ \t]+([^(]*))?\Z"
)


class Sessions:
    """The open SMTP sessions of one listener, so that a stop can end them politely: a
    session that is receiving or storing a message finishes it (the sender gets its 250,
    never a dropped connection after the final dot, which it would have to send again); every
    other one is told ``421 4.3.2`` and closed, as Postfix does on shutdown."""

    def __init__(self) -> None:
        self.open: set[MoatSMTP] = set()
        self._empty = asyncio.Event()
        self._empty.set()

    def add(self, session: MoatSMTP) -> None:
        self.open.add(session)
        self._empty.clear()

    def discard(self, session: MoatSMTP) -> None:
        self.open.discard(session)
        if not self.open:
            self._empty.set()

    async def close_all(self, timeout: float) -> None:
        """End every session; those still open after ``timeout`` seconds are cut."""
        for session in list(self.open):
            session.shut_down()
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except TimeoutError:
            log.warning(
                "%d SMTP session(s) still open after %.0fs; cutting them", len(self.open), timeout
            )
            for session in list(self.open):
                if session.transport is not None:
                    session.transport.close()


class MoatSMTP(LimitedSMTP):
    """aiosmtpd's protocol, with an enhanced status code (RFC 3463) on every reply, and a
    polite end when the service stops (see ``Sessions``). No AUTH here: the MX listener takes
    no passwords (the submission listeners do: ``services/ingress/submission.py``)."""

    offers_auth = False
    _in_ehlo = False
    _in_data = False
    _draining = False

    def __init__(
        self,
        handler: Any,
        sessions: Sessions,
        limits: SessionLimits | None = None,
        proxy_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.sessions = sessions
        self.limits = limits
        self.proxy_timeout = proxy_timeout

    def client_address(self) -> str:
        assert self.session is not None
        return client_ip(self.session)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self.sessions.discard(self)

    def shut_down(self) -> None:
        self._draining = True
        if not self._in_data:
            asyncio.get_running_loop().create_task(self._goodbye())

    async def _goodbye(self) -> None:
        if self.transport is None:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await super().push(replies.SHUTTING_DOWN)
        if self.transport is not None:
            self.transport.close()

    async def smtp_DATA(self, arg: str) -> None:
        self._in_data = True
        try:
            await self._receive_data(arg)
        finally:
            self._in_data = False
            logs.bind_queue_id(None)
        if self._draining:
            await self._goodbye()

    async def _receive_data(self, arg: str) -> None:
        """aiosmtpd 1.4.6's ``smtp_DATA`` (pinned in pyproject.toml), its line-by-line loop
        replaced by ``read_data``: the same end of data, refusals and content in a few reads
        instead of one round of Python per line (services/ingress/data.py)."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            state, original_content = await read_data(
                self._reader, self.data_size_limit, self.line_length_limit
            )
        except asyncio.CancelledError:  # the connection was lost during DATA
            self._writer.close()
            raise
        if state is DataState.TOO_LONG:
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
            self._data_done()
            return
        if state is DataState.TOO_MUCH:
            await self.push("552 Error: Too much mail data")
            self._data_done()
            return
        content: str | bytes = original_content
        if self._decode_data:  # never for our listeners (decode_data=False, SMTPUTF8 on)
            content = original_content.decode("utf-8", errors="surrogateescape")
        self.envelope.content = content
        self.envelope.original_content = original_content
        status: Any = MISSING
        if "DATA" in self._handle_hooks:
            status = await self._call_handler_hook("DATA")
        self._data_done()
        await self.push("250 OK" if status is MISSING else status)

    def _data_done(self) -> None:
        self._set_post_data_state()  # type: ignore[no-untyped-call]

    async def smtp_EHLO(self, hostname: str) -> None:
        # RFC 2034: the EHLO response carries no enhanced status codes.
        self._in_ehlo = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_ehlo = False

    async def smtp_AUTH(self, arg: str) -> None:
        if not self.offers_auth:
            await self.push(replies.AUTH_NOT_ENABLED)
            return
        await super().smtp_AUTH(arg)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str) -> None:
        # One answer for every argument, whatever the user or the syntax (aiosmtpd's 502 for
        # an unparsable one would tell them apart): VRFY never helps enumerate users.
        await self.push(replies.CANNOT_VRFY if arg else replies.VRFY_SYNTAX)

    @syntax("EXPN <list>")
    async def smtp_EXPN(self, arg: str) -> None:
        await self.push(replies.NO_EXPN)

    async def push(self, status: AnyStr) -> None:
        if self._in_ehlo and not self.offers_auth and str(status).startswith("250-AUTH"):
            return  # aiosmtpd lists AUTH once TLS is up; this listener does not offer it
        if isinstance(status, str) and not self._in_ehlo:
            await super().push(replies.with_enhanced_code(status))
        else:
            await super().push(status)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """MAIL FROM / RCPT TO's address and the rest (the parameters). The plain form,
        ``<dot-atom@host.name>``, is read here; anything else by aiosmtpd, whose reading
        (email's header parser, and a class it defines on every call) cost ~110 us an address,
        a tenth of ingress's CPU. Both give the same (tests/unit/test_replies_and_ingress_rules.py),
        except that what makes aiosmtpd's parser raise is unreadable here (553 5.1.3), where it
        was a 451 that would have had the client retry a malformed command for days.
        """
        plain = _PLAIN_ADDRESS.match(arg)
        if plain is None:
            try:
                return super()._getaddr(arg)
            except Exception:  # email's parser raises IndexError on "<": unreadable (553)
                return None, None
        address, rest = plain.group(1), plain.group(2) or ""
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, rest


class IngressHandler:
    def __init__(
        self,
        settings: Settings,
        repository: Repository,
        store: MessageStore,
        broker: Broker,
        confirmed: QueuedMarker,
        sender_rules: CachedRules | None = None,
        limits: SessionLimits | None = None,
        greylist: Greylist | None = None,
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.store = store
        self.broker = broker
        self.confirmed = confirmed
        # Only with block_action: reject somewhere; else the scanner alone applies the lists.
        self.sender_rules = sender_rules
        self.recipients = RecipientVerifier(settings)  # docs/recipient-verification.md
        self.limits = limits
        self.greylist = greylist

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd ends the list with "250 HELP"; we advertise what it does but doesn't say.
        return [*responses[:-1], "250-PIPELINING", "250 ENHANCEDSTATUSCODES"]

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if not self._room_for(_declared_size(mail_options)):
            log.warning("spool space low: MAIL from %s refused with 452 4.3.1", client_ip(session))
            return replies.INSUFFICIENT_STORAGE
        if self.limits and not await self.limits.allow_message(client_ip(session)):
            return replies.TOO_MUCH_MAIL
        # Without SMTPUTF8 the transaction is ASCII (RFC 6531 3.4): such an address could be
        # neither relayed nor sent a DSN, so taking it would only move the failure out of
        # sight. aiosmtpd has already read the SMTPUTF8 parameter into the envelope.
        if not (address.isascii() or envelope.smtp_utf8):
            return replies.SMTPUTF8_REQUIRED
        # aiosmtpd spells the null reverse-path "<>" and needs a truthy mail_from: keep it so
        # until DATA, where it becomes "".
        if address != "<>" and not is_mailbox(address):
            return replies.BAD_SENDER_SYNTAX
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return replies.SENDER_OK

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not (address.isascii() or envelope.smtp_utf8):  # as at MAIL
            return replies.SMTPUTF8_REQUIRED
        if not is_mailbox(address):
            return replies.BAD_RECIPIENT_SYNTAX
        if self.limits and not await self.limits.allow_recipient(client_ip(session)):
            return replies.TOO_MANY_RECIPIENTS_RATE
        domain = address.rpartition("@")[2]
        client = client_ip(session)
        protected = self.settings.relay_for(domain) is not None
        if not (protected or may_relay(self.settings, session, client)):
            log.info("relay denied: %s -> %s from %s", envelope.mail_from, address, client)
            return replies.RELAY_DENIED.format(domain=_printable(domain))
        if len(envelope.rcpt_tos) >= self.settings.smtp.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        if tls_of(server) is None and must_use_tls(
            self.settings, domain, _reverse_path(envelope), client
        ):
            return replies.TLS_REQUIRED
        if await self._sender_blocked(_reverse_path(envelope), address, domain):
            log.info(
                "sender blocked: %s -> %s from %s", envelope.mail_from, address, client_ip(session)
            )
            return replies.SENDER_BLOCKED
        refusal = await self.recipients.refusal(address, domain)
        if refusal is not None:
            log.info("recipient refused: %s from %s: %s", address, client_ip(session), refusal[:9])
            return refusal
        if await self._greylisted(session, envelope, address, domain):
            return replies.GREYLISTED
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RECIPIENT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # aiosmtpd hands over bare CRs and LFs as they came. Made CRLF first, so the loop
        # count, the forged-header rule, the spool, the scanners and the relay read one set
        # of lines: nothing can hide behind a line break that only some of them see.
        started = time.perf_counter()
        data = normalise_line_endings(envelope.original_content or b"")
        if count_received_headers(data) > self.settings.smtp.max_received_headers:
            log.warning(
                "loop suspected: from=<%s> client=%s", envelope.mail_from, client_ip(session)
            )
            metrics.get().ingress_messages.labels("loop").inc()
            return replies.LOOP_DETECTED

        message_id = new_message_id()
        logs.bind_queue_id(message_id)  # until the end of this DATA (MoatSMTP.smtp_DATA)
        data = strip_forged_headers(data, self.settings.smtp.hostname)
        raw = self._received_header(server, session, envelope, message_id) + data
        client_address = client_ip(session)
        stored = recorded = False
        try:
            await self.store.write(message_id, raw)
            stored = True
            new = NewMessage(
                message_id=message_id,
                mail_from=_reverse_path(envelope),
                rcpt_tos=list(envelope.rcpt_tos),
                size=len(raw),
                client_address=client_address,
                helo=session.host_name or "",
                smtp_utf8=bool(envelope.smtp_utf8),
                submitted_by=submitted_by(session),
            )
            await self.repository.record_received(new)
            recorded = True
            await self.broker.publish(
                SCAN, ScanRequest(message_id=message_id, envelope=new.envelope)
            )
        except Exception as exc:
            log.error("message from %s not accepted (%s): %s", client_ip(session), message_id, exc)
            await self._undo(message_id, stored=stored, recorded=recorded, reason=str(exc))
            metrics.get().ingress_messages.labels("failed").inc()
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return replies.INSUFFICIENT_STORAGE
            return replies.TEMPORARY_FAILURE
        self.confirmed.add(message_id)
        if isinstance(server, LimitedSMTP):
            server.message_delivered()
        log.info(
            "queued %s from=<%s> to=%d size=%d client=%s",
            message_id,
            envelope.mail_from,
            len(envelope.rcpt_tos),
            len(raw),
            client_address,
        )
        metrics.get().queued(time.perf_counter() - started)
        return replies.QUEUED.format(message_id=message_id)

    async def _sender_blocked(self, sender: str, recipient: str, domain: str) -> bool:
        """Whether a rule blocks ``sender`` for ``recipient`` and this domain's policy refuses
        such mail at RCPT. Rules that cannot be read refuse nothing here: the scanner, which
        never judges without them, holds what they block."""
        policy = self.settings.scanner_policy(domain).sender_lists
        if self.sender_rules is None or not sender or not policy.enabled:
            return False
        if policy.block_action != "reject":
            return False
        try:
            rules = await self.sender_rules.current()
        except RuntimeError:
            return False
        rule = rules.applicable(sender, recipient)
        return rule is not None and rule.action == RuleAction.BLOCK

    async def _greylisted(
        self, session: Session, envelope: Envelope, address: str, domain: str
    ) -> bool:
        if self.greylist is None or not self.settings.greylists(domain):
            return False
        ip = client_ip(session)
        if not ip or self.settings.smtp.trusts(ip) or session.authenticated:
            return False
        return not await self.greylist.admits(ip, _reverse_path(envelope), address)

    def _room_for(self, size: int) -> bool:
        """Whether the spool has room for a message of ``size`` bytes (0: not declared) and
        still the configured minimum free afterwards, as Postfix checks queue_minfree and the
        SIZE a client declares before it takes the mail."""
        try:
            free = self.store.free_bytes()
        except OSError as exc:
            log.error("cannot tell the spool's free space: %s", exc)
            return False
        return free - size >= self.settings.spool_free_minimum

    async def handle_exception(self, error: Exception) -> str:
        log.error("unexpected error in an SMTP session", exc_info=error)
        return replies.TEMPORARY_FAILURE

    async def _undo(self, message_id: str, *, stored: bool, recorded: bool, reason: str) -> None:
        """The sender was told 451: make sure nothing of this attempt is processed later."""
        try:
            if recorded:
                await self.repository.mark_rejected(message_id, f"not accepted: {reason}")
            if stored:
                await self.store.delete(message_id)
        except Exception:
            # The record stays 'received' and the recovery sweep will publish it: a duplicate
            # of what the sender retries, never a loss.
            log.exception("could not clean up %s after a failed accept", message_id)

    def _received_header(
        self, server: SMTP, session: Session, envelope: Envelope, message_id: str
    ) -> bytes:
        helo = _printable(session.host_name or "unknown")
        peer = client_ip(session) or "unknown"
        tls = tls_of(server)
        protocol = protocol_name(session, envelope, tls is not None)
        using = f"\r\n\t{tls_clause(tls)}" if tls is not None else ""
        recipient = ""
        if len(envelope.rcpt_tos) == 1:
            recipient = f"\r\n\tfor <{envelope.rcpt_tos[0]}>"
        header = (
            f"Received: from {helo} ([{peer}]){using}\r\n"
            f"\tby {self.settings.smtp.hostname} (Moat) with {protocol} id {message_id}"
            f"{recipient}; {format_datetime(utcnow())}\r\n"
        )
        return header.encode("utf-8")


class QueuedMarker:
    """Records, in batches, which messages the broker confirmed, so the recovery sweep knows
    which stored messages may never have been published. Losing a batch (crash) only means the
    sweep publishes those messages again, and duplicates are harmless."""

    def __init__(self, repository: Repository, interval: float = 0.2) -> None:
        self.repository = repository
        self.interval = interval
        self._pending: list[str] = []

    def add(self, message_id: str) -> None:
        self._pending.append(message_id)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            await self.repository.mark_queued(batch)
        except Exception:
            log.exception(
                "could not mark %d messages queued; the sweep will republish them", len(batch)
            )


def client_ip(session: Session) -> str:
    """The client's IP address as every rule and record should see it ("" if unknown). One
    place, so that a front end passing the real client on (the PROXY protocol) changes it for
    the limits, SPF, the logs and our Received: line alike."""
    proxy = session.proxy_data
    if proxy and proxy.src_addr is not None:  # not a PROXY v2 LOCAL (the balancer's own check)
        return str(proxy.src_addr)
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer) if peer else ""


def _declared_size(mail_options: list[str]) -> int:
    """The SIZE a client declared at MAIL (RFC 1870), 0 if none (aiosmtpd checked its form)."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0


def _reverse_path(envelope: Envelope) -> str:
    """The envelope sender, "" for the null sender."""
    mail_from = envelope.mail_from or ""
    return "" if mail_from == "<>" else mail_from


def _printable(text: str) -> str:
    return _UNSAFE_IN_HEADER.sub("?", text)[:255]


def smtp_factory(
    settings: Settings,
    handler: IngressHandler,
    sessions: Sessions,
    tls_context: ssl.SSLContext | None = None,
    protocol: type[MoatSMTP] = MoatSMTP,
    **options: Any,
) -> Any:
    """The protocol factory of a listener: the MX (``MoatSMTP``, STARTTLS with
    ``tls_context``) or a submission listener (``protocol`` and its ``options``). The
    handler's limits and the PROXY protocol apply to every listener but the implicit-TLS one,
    where TLS comes before any byte the protocol could read (docs/ingress-limits.md)."""
    proxy = settings.smtp.proxy_protocol and not options.get("implicit_tls")
    proxy_timeout = settings.smtp.proxy_protocol_timeout if proxy else None

    def make() -> MoatSMTP:
        return protocol(
            handler,
            sessions,
            tls_context=tls_context,
            limits=handler.limits,
            proxy_timeout=proxy_timeout,
            **options,
            hostname=settings.smtp.hostname,
            ident="Moat ESMTP",
            data_size_limit=settings.smtp.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=settings.smtp.idle_timeout,
        )

    return make
