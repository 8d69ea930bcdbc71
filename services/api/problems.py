"""Errors as RFC 9457 problem details, and how the OpenAPI schema says so.

Every error the API answers is ``application/problem+json`` with a ``Problem`` body (never an
exception's text). Clients generate code from the schema, so each operation lists the problems
it can answer, with that media type, derived from what the route depends on:

| status | when | documented for |
| --- | --- | --- |
| 401 | no valid token (``WWW-Authenticate: Bearer``) | routes that need a token |
| 403 | the token's role may not do this | ``WriterDep``, ``AdminDep``, ``StaffDep`` |
| 404 | no such resource, or one outside the caller's scope | routes with a path parameter |
| 409 | the resource's state does not allow it | routes that say so (``problem_responses``) |
| 400 | a body that is not even text (FastAPI's "error parsing the body") | routes with a body |
| 413 | the body is larger than ``api.max_body_bytes`` | routes that take a body |
| 422 | a request that does not validate | routes with parameters or a body |
| 503 | the database or broker is unreachable (``Retry-After``) | every ``/v1/`` route |
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

PROBLEM = "application/problem+json"
RETRY_AFTER_SECONDS = 30


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field("about:blank", description="a URI naming the kind of problem")
    title: str = Field(description="the HTTP status phrase")
    status: int = Field(description="the HTTP status code")
    detail: str = Field("", description="what went wrong, for people")


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = Problem(title=HTTPStatus(status).phrase, status=status, detail=detail)
    return JSONResponse(body.model_dump(), status_code=status, media_type=PROBLEM, headers=headers)


def unavailable(detail: str) -> JSONResponse:
    return problem(503, detail, {"Retry-After": str(RETRY_AFTER_SECONDS)})


_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}},
}

_DESCRIPTIONS = {
    400: "the body is not JSON (not even UTF-8)",
    401: "no valid bearer token",
    403: "the token may not do this",
    404: "no such resource, or one outside the token's scope: the two are indistinguishable",
    409: "the resource's state does not allow this",
    410: "the message's copy is gone (deleted, purged, or delivered and not kept)",
    413: "request body too large",
    422: "the request does not validate",
    503: "the database or the broker is unreachable; try again later",
}


def _problem_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _DESCRIPTIONS.get(status, HTTPStatus(status).phrase),
        "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if status in _HEADERS:
        response["headers"] = _HEADERS[status]
    return response


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """For a route decorator: problems a route answers beyond those derived from its
    dependencies (404 without a path parameter, 409, 410)."""
    return {status: _problem_response(status) for status in statuses}


# The name the quarantine routes use.
problems = problem_responses


def _calls(dependant: Dependant) -> Iterable[Callable[..., Any]]:
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            yield dependency.call
        yield from _calls(dependency)


def derived_statuses(
    route: APIRoute, *, authenticated: Callable[..., Any], restricted: set[Callable[..., Any]]
) -> set[int]:
    """The problems a route can answer, from what it depends on."""
    statuses = set()
    calls = set(_calls(route.dependant))
    if authenticated in calls:
        statuses.add(401)
    if calls & restricted:
        statuses.add(403)
    if route.dependant.path_params:
        statuses.update((404, 422))
    if route.dependant.query_params or route.dependant.header_params:
        statuses.add(422)
    if route.body_field is not None:
        statuses.update((400, 413, 422))
    if route.path.startswith("/v1/"):
        statuses.add(503)
    return statuses


def install_openapi(
    app: FastAPI, *, authenticated: Callable[..., Any], restricted: set[Callable[..., Any]]
) -> None:
    """Make ``app.openapi()`` document every route's problems with their real media type,
    replacing FastAPI's default 422 (``application/json``, a shape we never send)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["Problem"] = Problem.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        for route in app.routes:
            if not isinstance(route, APIRoute) or not route.include_in_schema:
                continue
            statuses = derived_statuses(route, authenticated=authenticated, restricted=restricted)
            for method in route.methods:
                operation = schema["paths"][route.path_format][method.lower()]
                responses = operation.setdefault("responses", {})
                for status in sorted(statuses):
                    responses.setdefault(str(status), _problem_response(status))
                for code, response in responses.items():
                    if code[:1] in "45" and "content" in response:
                        response["content"] = {
                            PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}
                        }
                        if int(code) in _HEADERS:
                            response["headers"] = _HEADERS[int(code)]
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
