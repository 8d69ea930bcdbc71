"""Errors as RFC 9457 problem details, and how the OpenAPI schema says so.

Every error the API answers is ``application/problem+json`` (``app.py`` turns every exception
into one). Clients are generated from the schema, so each route lists the errors it can answer
with that media type: ``responses=problems(401, 404, ...)``. The ``Problem`` schema is added to
the schema's components once (``add_problem_schema``), and every response refers to it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

PROBLEM = "application/problem+json"

_REF = {"$ref": "#/components/schemas/Problem"}

_MEANING = {
    401: "No bearer token, or one that is unknown, revoked or expired.",
    403: "The token may not do this (a reader changes nothing; some actions are for admins).",
    404: "No such message, or one outside the token's scope: the two are indistinguishable.",
    409: "The message (or request) is not in a state that allows this.",
    410: "The message's copy is gone (deleted, purged, or delivered and not kept).",
    413: "The request body is too large.",
    422: "The request is not valid (a parameter, the body, or a limit).",
    503: "A dependency (the database or the broker) is unavailable; try again later.",
}


class Problem(BaseModel):
    """An error (RFC 9457). ``detail`` says what went wrong for people; never internals."""

    type: str = Field("about:blank", description="always about:blank: the status says it")
    title: str = Field(description="the HTTP status phrase")
    status: int
    detail: str


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that can answer these error statuses."""
    documented: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        response: dict[str, Any] = {
            "description": _MEANING[code],
            "content": {PROBLEM: {"schema": _REF}},
        }
        if code == 401:
            response["headers"] = {
                "WWW-Authenticate": {
                    "description": "Bearer: the token scheme the API expects",
                    "schema": {"type": "string"},
                }
            }
        documented[code] = response
    return documented


def add_problem_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Put ``Problem`` into the schema's components, where ``problems()`` refers to it."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = Problem.model_json_schema()
    return schema
