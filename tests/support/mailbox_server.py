"""A domain's own mail server on loopback for recipient call-outs: it knows some users, answers
RCPT for them with 250, with 550 for anyone else and with 450 for the ones a test marks busy,
and records every MAIL and RCPT it was sent, so a test can count the probes."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

from tests.harness import LoopbackSMTP


class MailboxHandler:
    def __init__(self, users: set[str], busy: set[str], delay: float) -> None:
        self.users = {user.lower() for user in users}
        self.busy = {user.lower() for user in busy}
        self.delay = delay  # seconds before answering RCPT: keeps probes in flight
        self.refuse_sender = False
        self.mail_froms: list[str] = []
        self.rcpts: list[str] = []
        self.lock = threading.Lock()

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        with self.lock:
            self.mail_froms.append(address)
        if self.refuse_sender:
            return "550 5.7.1 we do not talk to the null sender"
        envelope.mail_from = address
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        with self.lock:
            self.rcpts.append(address)
        if self.delay:
            await asyncio.sleep(self.delay)
        if address.lower() in self.busy:
            return "450 4.2.1 Mailbox busy, try later"
        if address.lower() in self.users:
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 Ok"
        return f"550 5.1.1 <{address}>: Recipient address rejected: mailbox.internal says no"


class MailboxServer(LoopbackSMTP):
    def __init__(self, users: set[str], busy: set[str] | None = None, delay: float = 0.0) -> None:
        self.handler = MailboxHandler(users, busy or set(), delay)
        super().__init__(self.handler)

    def probes_for(self, address: str) -> int:
        with self.handler.lock:
            return sum(1 for rcpt in self.handler.rcpts if rcpt.lower() == address.lower())

    def probes(self) -> int:
        with self.handler.lock:
            return len(self.handler.rcpts)


class SilentServer:
    """Accepts TCP connections and never says a word: a hung mail server."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"
