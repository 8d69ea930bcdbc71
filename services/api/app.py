"""The FastAPI application: routes, and errors as RFC 9457 problem details (never a traceback).

The operational contract, for every route: bodies over ``api.max_body_bytes`` answer 413
before they are read; a database that cannot be reached answers 503 with ``Retry-After``
(never 500); each operation documents its problems with their real media type
(``services/api/problems.py``); ``/healthz``, ``/readyz`` and ``/metrics`` need no token.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from moat import __version__
from moat.broker import Broker
from moat.repository import Repository
from moat.sender_rules import SenderRuleStore
from moat.services import every
from moat.settings import Settings
from moat.spool import open_store
from services.api.audit import AuditLog
from services.api.auth import TokenStore
from services.api.deps import get_caller, require_admin, require_staff, require_writer
from services.api.digests import Digests
from services.api.links import Links
from services.api.middleware import ApiMetrics, BodyLimit, CountRequests, RefuseNul
from services.api.problems import PROBLEM, install_openapi, problem, unavailable
from services.api.quarantine import Quarantine, Refused
from services.api.routes import (
    audit,
    digests,
    feedback,
    health,
    messages,
    release_requests,
    senders,
    stats,
    submission_users,
    tokens,
    webhooks,
)
from services.api.signing import load_signing_key
from services.api.ui.pages import create_ui, make_templates
from services.api.ui.sessions import Sessions
from services.api.webhooks import Webhooks

__all__ = ["PROBLEM", "create_app", "problem"]

log = logging.getLogger("api")

# What a database that cannot be reached raises, by driver: SQLAlchemy wraps most, not all
# (asyncpg's connection errors, a refused connection).
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    SQLAlchemyError,
    sqlite3.Error,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    ConnectionError,
)


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """The methods of the path the request names, as the schema lists them: a fixed path
    (``/v1/messages/delete``) is its own resource, even where a template
    (``/v1/messages/{message_id}``) would also match it."""
    matching = [
        route
        for route in app.routes
        if isinstance(route, APIRoute) and route.matches(request.scope)[0] != Match.NONE
    ]
    fixed = [route for route in matching if "{" not in route.path]
    methods: set[str] = set()
    for route in fixed or matching:
        methods |= route.methods
    return sorted(methods)


def create_app(
    settings: Settings, repository: Repository, broker: Broker, signing_key: bytes | None = None
) -> FastAPI:
    """The API; ``signing_key`` defaults to the settings' (``load_signing_key``: outside dev
    the API does not start without one)."""
    key = signing_key if signing_key is not None else load_signing_key(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Reads need no broker: serve them at once and connect in the background.
        connecting = asyncio.create_task(broker.connect())
        jobs = [
            asyncio.create_task(app.state.webhooks.run()),
            asyncio.create_task(every(3600, housekeeping, "api housekeeping")),
        ]
        if settings.digest.interval > 0:
            jobs.append(asyncio.create_task(app.state.digests.periodic()))
        yield
        for job in [connecting, *jobs]:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        await broker.close()
        await repository.close()

    async def housekeeping() -> None:
        # A used nonce matters only while its link or session could still be presented.
        keep = max(settings.digest.link_ttl, settings.api.session_ttl) + 24 * 3600
        await links.prune(timedelta(seconds=keep))
        await app.state.webhooks.prune()

    app = FastAPI(title="Moat", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.repository = repository
    app.state.broker = broker
    app.state.tokens = TokenStore(repository.engine)
    app.state.audit = AuditLog(repository.engine)
    app.state.sender_rules = SenderRuleStore(repository.engine)
    app.state.store = store = open_store(settings)
    app.state.quarantine = Quarantine(repository, store, broker, app.state.audit, settings)
    templates = make_templates()
    links = Links(key, repository.engine, settings.api.base_url)
    app.state.webhooks = Webhooks(repository.engine, settings.webhooks)
    app.state.digests = Digests(repository, store, broker, links, templates, settings)
    sessions = Sessions(
        key,
        app.state.tokens,
        links,
        settings.admin_token.get_secret_value(),
        settings.api.session_ttl,
    )
    app.mount(
        "/ui",
        create_ui(
            settings,
            store,
            app.state.quarantine,
            app.state.tokens,
            links,
            sessions,
            app.state.audit,
            templates,
            app.state.sender_rules,
        ),
    )
    app.state.metrics = ApiMetrics()
    # The last added runs first: every request is counted, a 413 too.
    app.add_middleware(RefuseNul)
    app.add_middleware(BodyLimit, limit=settings.api.max_body_bytes)
    app.add_middleware(CountRequests, metrics=app.state.metrics)

    @app.exception_handler(StarletteHTTPException)
    async def http_problem(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # Starlette names the methods of the one route it tried; a path has a route per
            # method, and Allow must list them all (RFC 9110 15.5.6).
            headers = {"Allow": ", ".join(allowed_methods(app, request))}
        return problem(exc.status_code, str(exc.detail), headers)

    @app.exception_handler(Refused)
    async def refused_problem(request: Request, exc: Refused) -> JSONResponse:
        return problem(exc.status, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def validation_problem(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(
            422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        )

    async def database_problem(request: Request, exc: Exception) -> JSONResponse:
        # An outage, not a bug: the client may try again. The cause is in our log only.
        cause = getattr(exc, "orig", None) or exc
        log.warning(
            "database unavailable on %s %s: %s: %s",
            request.method,
            request.url.path,
            type(cause).__name__,
            cause,
        )
        return unavailable("the database is unreachable; try again later")

    for error in DATABASE_ERRORS:
        app.add_exception_handler(error, database_problem)

    @app.exception_handler(Exception)
    async def internal_problem(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "internal error; see the API's log")

    app.include_router(health.router)
    app.include_router(messages.router)
    app.include_router(feedback.router)
    app.include_router(senders.router)
    app.include_router(senders.message_router)
    app.include_router(stats.router)
    app.include_router(audit.router)
    app.include_router(tokens.router)
    app.include_router(webhooks.router)
    app.include_router(digests.router)
    app.include_router(release_requests.router)
    app.include_router(submission_users.router)
    install_openapi(
        app,
        authenticated=get_caller,
        restricted={require_writer, require_admin, require_staff},
    )
    return app
