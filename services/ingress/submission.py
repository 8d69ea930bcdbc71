"""Authenticated submission: the listeners where users log in (SMTP AUTH PLAIN or LOGIN, over
TLS only) and may then send to any domain (docs/ingress.md).

Port 587 (``submission.listen``): STARTTLS first; AUTH before it is ``538 5.7.11``, MAIL
``530 5.7.0``. Port 465 (``submission.listen_tls``): TLS from the first byte (RFC 8314). On
both, MAIL needs a successful AUTH (``530 5.7.0 Authentication required``). Bad credentials are
``535 5.7.8``; a client IP with ``max_auth_failures`` within ``auth_failure_window`` (counted for
every replica when the limits' Redis is configured) gets ``421 4.7.0`` and is disconnected, and
each failure is answered only after a delay.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiosmtpd.smtp import AuthResult, LoginPassword

from moat import replies
from moat.counters import CounterStore
from moat.passwords import verify_password
from moat.settings import SubmissionSettings
from moat.submission_users import SubmissionUserStore
from services.ingress.handler import MoatSMTP, client_ip
from services.ingress.security import tls_of

log = logging.getLogger(__name__)

# What aiosmtpd's PLAIN and LOGIN parsers hand to ``_authenticate``, which must answer at once;
# the check itself (a database read, argon2 in a thread) is awaited in ``_check`` instead.
_PARSED = "parsed, not yet checked"


class FailedLogins:
    """Failed logins per client IP in a window that starts at the first failure (as Postfix's
    anvil counts), in the session limits' counter store: with ``limits.redis_url`` one count
    for every ingress replica, so an attacker spread over replicas gets no more tries; else
    (or while Redis is away) this process's own, bounded count."""

    def __init__(self, limit: int, window: float, store: CounterStore) -> None:
        self.limit = limit
        self.window = window
        self.store = store

    @staticmethod
    def _key(client: str) -> str:
        return f"authfail:{client}"

    async def blocked(self, client: str) -> bool:
        return await self.store.hit(self._key(client), self.window, 0) >= self.limit

    async def add(self, client: str) -> bool:
        """Count a failure; True once the client has reached the limit."""
        return await self.store.hit(self._key(client), self.window) >= self.limit


class Credentials:
    """Who may log in: ``submission.users`` (the settings) first, then the database."""

    def __init__(self, settings: SubmissionSettings, store: SubmissionUserStore | None) -> None:
        self.users = settings.users
        self.store = store

    async def check(self, name: str, password: bytes) -> bool:
        hashed = self.users.get(name)
        if hashed is None and self.store is not None:
            hashed = await self.store.password_hash(name)
        # argon2 takes tens of milliseconds of CPU: not on the event loop. An unknown name is
        # checked against a decoy, so the answer takes as long as for a known one.
        return await asyncio.to_thread(verify_password, hashed, password)


class SubmissionSMTP(MoatSMTP):
    """A submission listener's session: AUTH offered over TLS, MAIL only after it."""

    offers_auth = True

    def __init__(
        self,
        handler: Any,
        sessions: Any,
        *,
        credentials: Credentials,
        failures: FailedLogins,
        failure_delay: float,
        implicit_tls: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, sessions, auth_required=True, **kwargs)
        if implicit_tls:
            # The whole connection is TLS, which aiosmtpd (knowing only STARTTLS) cannot see.
            # Set here rather than passed in: passed, it warns on every connection.
            self._auth_require_tls = False
        self.credentials = credentials
        self.failures = failures
        self.failure_delay = failure_delay

    async def smtp_MAIL(self, arg: str) -> None:
        if tls_of(self) is None:  # port 587 before STARTTLS (465 is TLS from the start)
            await self.push(replies.TLS_REQUIRED)
            return
        await super().smtp_MAIL(arg)

    async def smtp_AUTH(self, arg: str) -> None:
        if self.envelope is not None and self.envelope.mail_from:
            await self.push(replies.AUTH_IN_TRANSACTION)  # RFC 4954 4
            return
        if self.session is not None and await self.failures.blocked(client_ip(self.session)):
            await self._too_many()
            return
        await super().smtp_AUTH(arg)

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        return AuthResult(success=True, handled=False, auth_data=auth_data, message=_PARSED)

    async def auth_PLAIN(self, server: Any, args: list[str]) -> AuthResult:
        return await self._check(await super().auth_PLAIN(server, args))

    async def auth_LOGIN(self, server: Any, args: list[str]) -> AuthResult:
        return await self._check(await super().auth_LOGIN(server, args))

    async def _check(self, parsed: AuthResult) -> AuthResult:
        if parsed.message != _PARSED or not isinstance(parsed.auth_data, LoginPassword):
            return parsed  # aborted, or not base64: aiosmtpd has answered
        try:
            name = parsed.auth_data.login.decode("utf-8")
        except UnicodeDecodeError:
            name = ""
        password = parsed.auth_data.password
        client = client_ip(self.session) if self.session is not None else ""
        if name and await self.credentials.check(name, password):
            log.info("AUTH: %s logged in from %s", name, client)
            return AuthResult(success=True, auth_data=name, message=replies.AUTH_OK)
        log.warning("AUTH: failed login for %r from %s", name[:64], client)
        limit_reached = await self.failures.add(client)
        await asyncio.sleep(self.failure_delay)  # Postfix's smtpd_error_sleep_time
        if limit_reached:
            await self._too_many()
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=replies.AUTH_FAILED)

    async def _too_many(self) -> None:
        client = client_ip(self.session) if self.session is not None else ""
        log.warning("AUTH: too many failures from %s; disconnecting", client)
        await self.push(replies.AUTH_TOO_MANY_FAILURES)
        if self.transport is not None:
            self.transport.close()


def submission_options(
    settings: SubmissionSettings, store: SubmissionUserStore | None, counters: CounterStore
) -> dict[str, Any]:
    """What ``smtp_factory`` passes to each ``SubmissionSMTP``: one set of credentials and
    one failure count shared by both listeners (and, in Redis, by every replica)."""
    return {
        "protocol": SubmissionSMTP,
        "credentials": Credentials(settings, store),
        "failures": FailedLogins(
            settings.max_auth_failures, settings.auth_failure_window, counters
        ),
        "failure_delay": settings.auth_failure_delay,
    }
