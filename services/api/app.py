"""The FastAPI application: routes, and errors as RFC 9457 problem details (never a traceback)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from moat import __version__
from moat.broker import Broker
from moat.repository import Repository
from moat.settings import Settings
from moat.spool import MessageStore
from services.api.audit import AuditLog
from services.api.auth import TokenStore
from services.api.models import Health
from services.api.problems import PROBLEM, add_problem_schema
from services.api.quarantine import Quarantine, Refused
from services.api.routes import feedback, messages, release_requests, tokens

log = logging.getLogger("api")


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def create_app(settings: Settings, repository: Repository, broker: Broker) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Reads need no broker: serve them at once and connect in the background.
        connecting = asyncio.create_task(broker.connect())
        yield
        connecting.cancel()
        await broker.close()
        await repository.close()

    app = FastAPI(title="Moat", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.repository = repository
    app.state.broker = broker
    app.state.tokens = TokenStore(repository.engine)
    app.state.audit = AuditLog(repository.engine)
    app.state.quarantine = Quarantine(
        repository, MessageStore(settings.spool_dir), broker, app.state.audit, settings
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_problem(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Refused)
    async def refused_problem(request: Request, exc: Refused) -> JSONResponse:
        return problem(exc.status, exc.detail)

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
    app.include_router(release_requests.router)

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        return add_problem_schema(generate())

    app.openapi = openapi  # type: ignore[method-assign]
    return app
