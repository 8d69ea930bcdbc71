"""Per client IP session limits and greylisting for the SMTP listener (docs/ingress-limits.md).

The counters live in a ``CounterStore`` (Redis, shared by the replicas, or the process); this
module only decides. Trusted networks (``smtp.trusted_networks``) are exempt from all of it.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import AnyStr

from aiosmtpd.proxy_protocol import get_proxy
from aiosmtpd.smtp import SMTP

from moat import metrics, replies
from moat.counters import CounterStore, new_member
from moat.settings import GreylistSettings, LimitsSettings, SmtpSettings

log = logging.getLogger(__name__)


class SessionLimits:
    """Postfix's anvil limits per client IP: open connections, MAIL and RCPT per window, and
    the error count of one session (``errors``)."""

    def __init__(self, settings: LimitsSettings, smtp: SmtpSettings, store: CounterStore):
        self.settings = settings
        self.smtp = smtp
        self.store = store

    def exempt(self, ip: str) -> bool:
        return not ip or self.smtp.trusts(ip)

    async def connect(self, ip: str, member: str) -> bool:
        """Count a new connection from ``ip`` as ``member`` (to ``disconnect`` with); False
        when the client already has as many open as it may (then it is not counted)."""
        if self.exempt(ip) or not self.settings.connections:
            return True
        key = f"conn:{ip}"
        count = await self.store.join(key, member, self.settings.connection_ttl)
        if count > self.settings.connections:
            await self.store.leave(key, member)
            log.warning("too many connections from %s (%d)", ip, count - 1)
            _limited("connections")
            return False
        return True

    async def disconnect(self, ip: str, member: str) -> None:
        if self.exempt(ip) or not self.settings.connections:
            return
        await self.store.leave(f"conn:{ip}", member)

    async def needs_greet_pause(self, ip: str) -> bool:
        """Whether to wait before the greeting to catch an early talker: not for a client that
        passed the test within greet_pass_ttl (postscreen's cache of passed clients)."""
        if self.exempt(ip) or not self.settings.greet_pause:
            return False
        return await self.store.get(f"greet:{ip}") is None

    async def passed_greet_pause(self, ip: str) -> None:
        if self.settings.greet_pass_ttl:
            await self.store.put(f"greet:{ip}", "1", self.settings.greet_pass_ttl)

    async def allow_message(self, ip: str) -> bool:
        return await self._within_rate(ip, "mail", self.settings.messages_per_minute, "message")

    async def allow_recipient(self, ip: str) -> bool:
        return await self._within_rate(ip, "rcpt", self.settings.recipients_per_minute, "recipient")

    async def _within_rate(self, ip: str, key: str, limit: int, what: str) -> bool:
        """Count one event for ``ip`` in the rate window; False once past ``limit`` (0: off)."""
        if not limit or self.exempt(ip):
            return True
        count = await self.store.hit(f"{key}:{ip}", self.settings.rate_window)
        if count > limit:
            log.warning("%s rate limit exceeded: %d from %s", what, count, ip)
            _limited(f"{what}_rate")
            return False
        return True


class ErrorCount:
    """One session's errors (4xx and 5xx replies), as Postfix's smtpd counts them: past the
    soft limit each error reply waits ``error_sleep`` first; at the hard limit the session is
    ended with ``421 4.7.0``. A delivered message starts the count again ("errors without
    delivering mail")."""

    def __init__(self, settings: LimitsSettings, exempt: bool) -> None:
        self.settings = settings
        self.exempt = exempt
        self.count = 0

    def reset(self) -> None:
        self.count = 0

    def add(self) -> bool:
        """Count one error; whether the session must now end."""
        if self.exempt:
            return False
        self.count += 1
        hard = self.settings.hard_error_limit
        return bool(hard) and self.count >= hard

    async def pause(self) -> None:
        """Before an error reply: the delay once past the soft limit."""
        soft = self.settings.soft_error_limit
        if self.exempt or not soft or not self.settings.error_sleep:
            return
        if self.count + 1 > soft:
            await asyncio.sleep(self.settings.error_sleep)


class Greylist:
    """RFC 6647 greylisting on the triplet (client network, sender, recipient): the first
    attempt is refused with ``451 4.7.1``; a retry after ``delay`` and within ``retry_window``
    passes, and then the client's network passes at once for ``memory`` (auto-whitelist).
    IPv4 clients are taken by /24 and IPv6 by ``ipv6_prefix``, as a sender's retries may come
    from another address of its pool."""

    def __init__(
        self,
        settings: GreylistSettings,
        store: CounterStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self._clock = clock

    def network(self, ip: str) -> str:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return ip
        prefix = 24 if address.version == 4 else self.settings.ipv6_prefix
        return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))

    async def admits(self, ip: str, sender: str, recipient: str) -> bool:
        network = self.network(ip)
        if await self.store.get(f"grey:pass:{network}") is not None:
            return True
        triplet = "\0".join((network, sender.lower(), recipient.lower())).encode()
        key = "grey:t:" + hashlib.sha256(triplet).hexdigest()[:32]
        now = self._clock()
        if await self.store.put(key, repr(now), self.settings.retry_window, only_new=True):
            log.info("greylisted: %s from=<%s> to=<%s> (first attempt)", ip, sender, recipient)
            _limited("greylisted")
            return False
        first = await self.store.get(key)
        waited = now - float(first) if first is not None else 0.0
        if waited < self.settings.delay:
            log.info(
                "greylisted: %s from=<%s> to=<%s> (retried after %.0fs)",
                ip,
                sender,
                recipient,
                waited,
            )
            _limited("greylisted")
            return False
        await self.store.put(f"grey:pass:{network}", "1", self.settings.memory)
        log.info("greylist passed: %s from=<%s> to=<%s> after %.0fs", ip, sender, recipient, waited)
        return True


def _limited(limit: str) -> None:
    metrics.get().ingress_limited.labels(limit).inc()


# Error replies that do not count: a 421 ends the session anyway, and Postfix leaves recipients
# over the per-message limit (452 4.5.3) out of the error count.
_NOT_COUNTED = ("421", "452 4.5.3")
_background: set[asyncio.Task[None]] = set()


class LimitedSMTP(SMTP):
    """aiosmtpd's protocol with what happens before the greeting (the PROXY header, the
    connection count, the early-talker pause) and the per-session error count. The listener
    passes ``limits`` (None: no limits) and ``proxy_timeout`` (None: no PROXY protocol)."""

    limits: SessionLimits | None = None
    proxy_timeout: float | None = None
    _member: str | None = None
    _errors: ErrorCount | None = None
    _ending = False

    def client_address(self) -> str:
        """The client's IP address as the rules see it (the proxied one behind a proxy)."""
        raise NotImplementedError

    async def _handle_client(self) -> None:
        if await self._admit():
            await super()._handle_client()
        elif self.transport is not None:
            self.transport.close()

    async def _admit(self) -> bool:
        """Whether to greet this client; False: it was told why (or not) and is closed."""
        assert self.session is not None
        if self.proxy_timeout is not None:
            # aiosmtpd reads the header too (proxy_protocol_timeout), but only just before
            # its greeting: the limits must see the proxied address before that.
            self._reset_timeout(self.proxy_timeout)
            try:
                proxy = await get_proxy(self._reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return False
            if not proxy:
                log.warning(
                    "%r: no valid PROXY header (%s); closed", self.session.peer, proxy.error
                )
                return False
            self.session.proxy_data = proxy
            self._reset_timeout()
        if self.limits is None:
            return True
        ip = self.client_address()
        self._errors = ErrorCount(self.limits.settings, self.limits.exempt(ip))
        # Named before it is counted: a client gone in the meantime is still taken off
        # (connection_lost). Both look-ups at once: with Redis, one round trip's wait.
        self._member = new_member()
        admitted, pause = await asyncio.gather(
            self.limits.connect(ip, self._member), self.limits.needs_greet_pause(ip)
        )
        if not admitted:
            self._member = None
            await self.push(replies.TOO_MANY_CONNECTIONS)
            return False
        if pause:
            try:
                early = await asyncio.wait_for(
                    self._reader.read(1), self.limits.settings.greet_pause
                )
            except TimeoutError:
                await self.limits.passed_greet_pause(ip)
            else:
                if early:  # else the client left
                    log.warning("early talker %s refused", ip)
                    _limited("early_talker")
                    await self.push(replies.EARLY_TALKER)
                return False
        return True

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        member, self._member = self._member, None
        if member is not None and self.limits is not None:
            task = asyncio.get_running_loop().create_task(
                self.limits.disconnect(self.client_address(), member)
            )
            _background.add(task)
            task.add_done_callback(_background.discard)

    async def push(self, status: AnyStr) -> None:
        errors = self._errors
        if (
            errors is None
            or not isinstance(status, str)
            or status[:1] not in ("4", "5")
            or status.startswith(_NOT_COUNTED)
            or self._ending
        ):
            await super().push(status)
            return
        await errors.pause()
        await super().push(status)
        if errors.add():
            self._ending = True
            log.warning("too many errors from %s; closing", self.client_address())
            _limited("errors")
            await super().push(replies.TOO_MANY_ERRORS)
            if self.transport is not None:
                self.transport.close()
            # Ends the session's task: nothing more of what the client sent is read.
            raise asyncio.CancelledError

    def message_delivered(self) -> None:
        """A message was accepted: Postfix counts errors "without delivering mail"."""
        if self._errors is not None:
            self._errors.reset()
