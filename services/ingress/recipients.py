"""Recipient verification at RCPT: mail for a user the domain does not have is refused in the
SMTP dialogue (``550 5.1.1``), so no bounce is ever sent for it later (backscatter).

Per protected domain (``domains.<name>``), one of:

- ``recipients``: the domain's addresses, exact or glob patterns (``*`` any run of characters,
  ``?`` one), compared without regard to case, local part included (as Postfix's lookup tables
  do: mail servers treat ``Alice`` and ``alice`` as one mailbox);
- ``verify: callout``: an RCPT probe (``MAIL FROM:<>``, ``RCPT TO:<address>``, ``QUIT``) to the
  domain's own server, the route delivery uses; answers cached (``callout`` settings: an
  existing address for ``positive_ttl``, an unknown one for the shorter ``negative_ttl``), one
  probe at a time per address however many sessions ask, at most ``callout.timeout`` seconds.

A probe that gets no verdict (no connection, no answer in time, the sender refused, a 4xx to
RCPT) is never taken for one: the client is told to retry (``450 4.1.1`` / ``451 4.4.3``), and
such outcomes are not cached, so the first RCPT after the server is back is answered truly.
``postmaster`` is always accepted (RFC 5321 4.5.1). See docs/recipient-verification.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiosmtplib

from moat import replies
from moat.settings import CalloutSettings, Settings
from services.delivery.routing import resolve_route

log = logging.getLogger(__name__)


class Answer(enum.Enum):
    EXISTS = "exists"
    UNKNOWN = "unknown"  # the list has no such address, or the server said 5xx to RCPT
    DEFERRED = "deferred"  # the server said 4xx to RCPT
    UNREACHABLE = "unreachable"  # no answer to RCPT: connection, timeout, greeting, MAIL


# What the client is told, by answer (None: accepted).
_REPLIES: dict[Answer, str | None] = {
    Answer.EXISTS: None,
    Answer.UNKNOWN: replies.USER_UNKNOWN,
    Answer.DEFERRED: replies.UNVERIFIED_DEFERRED,
    Answer.UNREACHABLE: replies.UNVERIFIED_UNREACHABLE,
}


@dataclass(frozen=True)
class ProbeResult:
    answer: Answer
    detail: str  # for our log only: the server's reply or why none came


_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def canonical(address: str) -> str:
    """The form addresses are compared and cached in: lower case, a trailing dot of the
    domain dropped (ingress routes ``example.test.`` as ``example.test``), and quotes that
    change nothing removed (``"alice"@`` is ``alice@``, RFC 5321 4.1.2)."""
    local, _, domain = address.rpartition("@")
    if len(local) >= 2 and local[0] == local[-1] == '"' and _DOT_ATOM.fullmatch(local[1:-1]):
        local = local[1:-1]
    return f"{local}@{domain.rstrip('.')}".lower()


def is_postmaster(address: str) -> bool:
    return canonical(address).rpartition("@")[0] == "postmaster"


class RecipientList:
    """A domain's ``recipients``: exact addresses in a set, the patterns in one regex."""

    def __init__(self, entries: Iterable[str]) -> None:
        exact: set[str] = set()
        globs: list[str] = []
        for entry in entries:
            entry = entry.lower()
            if "*" in entry or "?" in entry:
                globs.append(
                    "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in entry)
                )
            else:
                exact.add(entry)
        self.exact = frozenset(exact)
        self.patterns = re.compile("|".join(globs), re.DOTALL) if globs else None

    def __contains__(self, address: str) -> bool:
        address = canonical(address)
        if address in self.exact:
            return True
        return self.patterns is not None and self.patterns.fullmatch(address) is not None


class AnswerCache:
    """Call-out answers by lower-cased address, each until its TTL runs out, the oldest
    dropped beyond ``max_entries`` (an enumeration attempt cannot grow it without bound)."""

    def __init__(self, settings: CalloutSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, Answer]] = OrderedDict()

    def get(self, key: str) -> Answer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, answer = entry
        if self.clock() >= expires:
            del self._entries[key]
            return None
        return answer

    def put(self, key: str, answer: Answer) -> None:
        if answer is Answer.EXISTS:
            ttl = self.settings.positive_ttl
        elif answer is Answer.UNKNOWN:
            ttl = self.settings.negative_ttl
        else:
            return  # no verdict: ask again next time
        if ttl <= 0:
            return
        self._entries[key] = (self.clock() + ttl, answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self.settings.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


async def probe(
    host: str, port: int, address: str, settings: CalloutSettings, helo: str, timeout: float
) -> ProbeResult:
    """Ask ``host:port`` whether it takes mail for ``address``: connect, EHLO (opportunistic
    STARTTLS, as delivery), MAIL FROM the probe sender, RCPT TO ``address``, QUIT. Never
    raises: a failure is an ``UNREACHABLE`` result."""
    timeout = max(timeout, 0.01)  # what is left of the budget: aiosmtplib wants it positive
    client = aiosmtplib.SMTP(
        hostname=host,
        port=port,
        local_hostname=helo,
        timeout=timeout,
        start_tls=None,
        validate_certs=False,
    )
    stage = "connect"
    try:
        async with asyncio.timeout(timeout):
            await client.connect()
            if client.is_ehlo_or_helo_needed:
                stage = "EHLO"
                await client.ehlo()
            options: list[str] = []
            encoding = "ascii"
            if not address.isascii():
                if not client.supports_extension("smtputf8"):
                    # Delivery could not relay it either (553 5.6.7 there): no such mailbox.
                    return ProbeResult(Answer.UNKNOWN, "server lacks SMTPUTF8")
                options.append("SMTPUTF8")
                encoding = "utf-8"
            stage = "MAIL"
            await client.mail(settings.sender, options=options, encoding=encoding)
            stage = "RCPT"
            try:
                response = await client.rcpt(address, encoding=encoding)
                code, text = response.code, response.message
            except aiosmtplib.SMTPRecipientRefused as refused:
                code, text = refused.code, refused.message
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1):
                await client.quit()
    except Exception as exc:  # a network or protocol failure is no verdict on the address
        client.close()
        detail = f"{stage}: {type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
        return ProbeResult(Answer.UNREACHABLE, detail)
    finally:
        client.close()
    detail = f"RCPT: {code} {' '.join(text.split())}"[:300]
    if 200 <= code < 300:
        return ProbeResult(Answer.EXISTS, detail)
    if 400 <= code < 500:
        return ProbeResult(Answer.DEFERRED, detail)
    if 500 <= code < 600:
        return ProbeResult(Answer.UNKNOWN, detail)
    return ProbeResult(Answer.UNREACHABLE, detail)


class RecipientVerifier:
    """The RCPT check of every protected domain; ``refusal`` answers it."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.lists = {
            name: RecipientList(domain.recipients)
            for name, domain in settings.domains.items()
            if domain.recipients is not None
        }
        self.callout_domains = frozenset(
            name for name, domain in settings.domains.items() if domain.verify == "callout"
        )
        self.cache = AnswerCache(settings.callout, clock)
        self._inflight: dict[str, asyncio.Task[Answer]] = {}
        self._slots: asyncio.Semaphore | None = None
        self.probes = 0  # probes sent by this process

    async def refusal(self, address: str, domain: str) -> str | None:
        """The reply refusing ``address`` (of the protected ``domain``), or None to accept."""
        domain = domain.lower().rstrip(".")
        if is_postmaster(address):
            return None
        recipients = self.lists.get(domain)
        if recipients is not None:
            answer = Answer.EXISTS if address in recipients else Answer.UNKNOWN
        elif domain in self.callout_domains:
            answer = await self.callout(address, domain)
        else:
            return None
        reply = _REPLIES[answer]
        return reply.format(address=address) if reply else None

    async def callout(self, address: str, domain: str) -> Answer:
        key = canonical(address)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._probe(key, address, domain))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        # Shielded: a client that hangs up does not cancel the probe others are waiting for.
        return await asyncio.shield(task)

    def _forget(self, key: str, task: asyncio.Task[Answer]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]

    async def _probe(self, key: str, address: str, domain: str) -> Answer:
        route = resolve_route(domain, self.settings)  # the protected domain's relay
        if route is None:  # not a protected domain: refused before verification is asked
            return Answer.UNREACHABLE
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.callout.max_concurrent)
        # One budget for the wait for a free slot and the probe: the RCPT is answered within
        # callout.timeout whatever the load.
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.callout.timeout):
                await self._slots.acquire()
        except TimeoutError:
            result = ProbeResult(Answer.UNREACHABLE, "too many probes in flight")
        else:
            try:
                self.probes += 1
                result = await probe(
                    route.host,
                    route.port,
                    address,
                    self.settings.callout,
                    self.settings.smtp.hostname,
                    self.settings.callout.timeout - (time.monotonic() - started),
                )
            finally:
                self._slots.release()
        self.cache.put(key, result.answer)
        verdict = result.answer in (Answer.EXISTS, Answer.UNKNOWN)
        log.log(
            logging.INFO if verdict else logging.WARNING,
            "callout %s via %s:%d: %s (%s) in %.0f ms",
            address,
            route.host,
            route.port,
            result.answer.value,
            result.detail,
            (time.monotonic() - started) * 1000,
        )
        return result.answer
