"""Delivery's outcome table: what each thing a next hop can do means for a recipient; and how
the SMTP session reports network trouble (connection refused, timeouts, resets, DNS, greetings)
against real sockets on loopback."""

from __future__ import annotations

import asyncio
import socket

import pytest

from moat.model import MessageStatus, RecipientStatus
from services.delivery.outcomes import (
    EXPIRED_STATUS,
    NoReply,
    Outcome,
    Reply,
    dsn_status,
    final_status,
    judge,
)
from services.delivery.routing import Route
from services.delivery.smtp_session import SmtpClient

D, F, B = RecipientStatus.DELIVERED, RecipientStatus.DEFERRED, RecipientStatus.BOUNCED

# (reply, outcome while the message is young, its RFC 3463 status)
TABLE = [
    (Reply(250, "2.0.0 Ok: queued"), D, "2.0.0"),
    (Reply(251, "User not local; will forward"), D, "2.0.0"),
    (Reply(421, "4.3.2 Service shutting down"), F, "4.3.2"),
    (Reply(421, "4.7.0 Try later", greeting=True), F, "4.7.0"),
    (Reply(451, "4.3.0 Try again later"), F, "4.3.0"),
    (Reply(452, "Insufficient storage"), F, "4.0.0"),
    (Reply(550, "5.1.1 No such user"), B, "5.1.1"),
    (Reply(554, "5.7.1 Rejected"), B, "5.7.1"),
    (Reply(552, "4.2.2 mailbox full"), B, "5.0.0"),  # an enhanced code of the wrong class
    (Reply(554, "No SMTP service here", greeting=True), F, "4.4.0"),
    (Reply(550, "5.7.1 go away", greeting=True), F, "4.4.0"),  # a 5xx answer to EHLO
    (Reply(354, "odd"), F, "4.5.0"),
    (Reply(199, "odd"), F, "4.5.0"),
    (Reply(None, "no route", NoReply.NO_ROUTE), F, "4.4.0"),
    (Reply(None, "lookup failed", NoReply.DNS), F, "4.4.3"),
    (Reply(None, "refused", NoReply.REFUSED), F, "4.4.1"),
    (Reply(None, "timeout", NoReply.TIMEOUT), F, "4.4.1"),
    (Reply(None, "reset", NoReply.RESET), F, "4.4.2"),
    (Reply(None, "dropped", NoReply.DROPPED_AFTER_DATA), F, "4.4.2"),
    (Reply(None, "tls", NoReply.TLS), F, "4.7.0"),
    (Reply(None, "unknown"), F, "4.4.2"),
]


@pytest.mark.parametrize(("reply", "status", "code"), TABLE)
def test_young_message(reply: Reply, status: RecipientStatus, code: str) -> None:
    outcome = judge(reply, expired=False)
    assert (outcome.status, outcome.status_code) == (status, code)
    assert outcome.reply == str(reply)


@pytest.mark.parametrize(("reply", "status", "code"), TABLE)
def test_expired_message(reply: Reply, status: RecipientStatus, code: str) -> None:
    """Past its lifetime every deferral becomes a bounce; delivered and bounced stay."""
    outcome = judge(reply, expired=True)
    if status == F:
        assert outcome.status == B
        assert outcome.status_code == EXPIRED_STATUS
        assert outcome.reply.startswith("message lifetime exceeded; last: ")
        assert str(reply) in outcome.reply
    else:
        assert (outcome.status, outcome.status_code) == (status, code)


def test_a_dsn_always_reports_a_permanent_status() -> None:
    assert dsn_status(Outcome(B, "5.1.1", "")) == "5.1.1"
    assert dsn_status(Outcome(B, "4.4.7", "")) == "5.4.7"


def test_final_status() -> None:
    p, q = RecipientStatus.PENDING, RecipientStatus.QUARANTINED
    assert final_status([D, D]) == MessageStatus.DELIVERED
    assert final_status([B]) == MessageStatus.BOUNCED
    assert final_status([D, B]) == MessageStatus.PARTIALLY_DELIVERED
    assert final_status([D, F]) == MessageStatus.DEFERRED
    assert final_status([p, D]) == MessageStatus.DEFERRED
    # Some recipients still held (a partial release): back to quarantine once the others are done.
    assert final_status([D, q]) == MessageStatus.QUARANTINED
    assert final_status([F, q]) == MessageStatus.DEFERRED
    assert final_status([D, RecipientStatus.DELETED]) == MessageStatus.DELIVERED


# --- the SMTP session reports what the network did, never raises --------------------------------


def _send(port: int, **client: float) -> Reply:
    smtp = SmtpClient("moat.test", client.get("connect", 2.0), client.get("command", 2.0))

    async def go() -> Reply:
        try:
            replies = await smtp.send(
                Route("127.0.0.1", port, "relay"),
                "a@x.test",
                ["b@y.test"],
                b"x\r\n",
                smtp_utf8=False,
            )
        finally:
            await smtp.close()
        return replies["b@y.test"]

    return asyncio.run(go())


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once it is closed


def test_connection_refused_is_deferred() -> None:
    reply = _send(_closed_port())
    assert reply.failure == NoReply.REFUSED
    assert judge(reply, expired=False).status == F


def test_dns_failure_is_deferred() -> None:
    smtp = SmtpClient("moat.test", 2.0, 2.0)

    async def go() -> Reply:
        replies = await smtp.send(
            Route("no-such-host.invalid", 25, "relay"),
            "a@x.test",
            ["b@y.test"],
            b"x\r\n",
            smtp_utf8=False,
        )
        return replies["b@y.test"]

    reply = asyncio.run(go())
    assert reply.failure == NoReply.DNS, reply
    assert judge(reply, expired=False).status_code == "4.4.3"


class _Peer:
    """A TCP server on loopback that plays a scripted, misbehaving next hop."""

    def __init__(self, script: list[bytes | None]) -> None:
        # Each item is sent after reading one line (the first before reading anything);
        # None closes the connection; b"" sends nothing (silence).
        self.script = script
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = int(self.sock.getsockname()[1])
        import threading

        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            reader = conn.makefile("rb")
            for index, item in enumerate(self.script):
                if index:
                    line = reader.readline()
                    if line.upper().startswith(b"DATA"):
                        conn.sendall(b"354 go ahead\r\n")
                        while reader.readline() not in (b".\r\n", b""):
                            pass
                if item is None:
                    conn.shutdown(socket.SHUT_RDWR)
                    return
                conn.sendall(item)
            reader.read()

    def close(self) -> None:
        self.sock.close()


def test_421_greeting_is_deferred() -> None:
    peer = _Peer([b"421 4.7.0 mx.test too busy, try later\r\n", None])
    reply = _send(peer.port)
    peer.close()
    assert (reply.code, reply.greeting) == (421, True)
    assert judge(reply, expired=False) == Outcome(F, "4.7.0", str(reply))


def test_closed_before_the_greeting_is_deferred() -> None:
    peer = _Peer([None])
    reply = _send(peer.port)
    peer.close()
    assert reply.code is None
    assert judge(reply, expired=False).status == F


def test_silent_server_times_out_and_is_deferred() -> None:
    peer = _Peer([b""])
    reply = _send(peer.port, connect=0.5, command=0.5)
    peer.close()
    assert reply.failure == NoReply.TIMEOUT, reply
    assert judge(reply, expired=False).status_code == "4.4.1"


def test_drop_after_the_final_dot_is_deferred() -> None:
    ok = b"250 ok\r\n"
    # greeting, EHLO, MAIL, RCPT, DATA (354 and the message read by the peer), then it hangs up
    peer = _Peer([b"220 mx.test ESMTP\r\n", ok, ok, ok, None])
    reply = _send(peer.port)
    peer.close()
    assert reply.failure == NoReply.DROPPED_AFTER_DATA, reply
    assert judge(reply, expired=False) == Outcome(F, "4.4.2", str(reply))


def test_reset_mid_conversation_keeps_the_replies_already_given() -> None:
    ok = b"250 ok\r\n"
    smtp = SmtpClient("moat.test", 2.0, 2.0)
    # greeting, EHLO, MAIL, first RCPT refused, then the server goes away
    peer = _Peer([b"220 mx.test ESMTP\r\n", ok, ok, b"550 5.1.1 no such user\r\n", None])

    async def go() -> dict[str, Reply]:
        try:
            return await smtp.send(
                Route("127.0.0.1", peer.port, "relay"),
                "a@x.test",
                ["gone@y.test", "b@y.test"],
                b"x\r\n",
                smtp_utf8=False,
            )
        finally:
            await smtp.close()

    replies = asyncio.run(go())
    peer.close()
    assert judge(replies["gone@y.test"], expired=False).status == B
    assert replies["b@y.test"].code is None
    assert judge(replies["b@y.test"], expired=False).status == F
