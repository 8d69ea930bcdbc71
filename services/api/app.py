"""The FastAPI application: routes, and errors as RFC 9457 problem details (never a traceback)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from moat import __version__
from moat.broker import Broker
from moat.repository import Repository
from moat.services import every
from moat.settings import Settings
from moat.spool import MessageStore
from services.api.audit import AuditLog
from services.api.auth import TokenStore
from services.api.digests import Digests
from services.api.links import Links
from services.api.models import Health
from services.api.quarantine import Quarantine
from services.api.routes import digests, feedback, messages, tokens, webhooks
from services.api.signing import load_signing_key
from services.api.ui.pages import create_ui, make_templates
from services.api.ui.sessions import Sessions
from services.api.webhooks import Webhooks

log = logging.getLogger("api")

PROBLEM = "application/problem+json"


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


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
    store = MessageStore(settings.spool_dir)
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
        ),
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_problem(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_problem(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(
            422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        )

    @app.exception_handler(Exception)
    async def internal_problem(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "internal error; see the API's log")

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        return Health(status="ok")

    app.include_router(messages.router)
    app.include_router(feedback.router)
    app.include_router(tokens.router)
    app.include_router(webhooks.router)
    app.include_router(digests.router)
    return app
