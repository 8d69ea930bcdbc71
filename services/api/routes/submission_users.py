"""``/v1/submission-users``: administrators manage who may log in on the submission
listeners (SMTP AUTH). Only an argon2 hash of a password is kept; no route returns it. Users of
the settings (``submission.users``) are listed too, marked as such, and cannot be changed here.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel, Field

from moat.passwords import hash_password
from moat.submission_users import SubmissionUser, SubmissionUserStore, UserExists
from services.api.deps import AdminDep, AuditDep, SettingsDep
from services.api.models import UtcDateTime
from services.api.problems import problems

router = APIRouter(prefix="/v1/submission-users", tags=["submission users"])


class SubmissionUserCreate(BaseModel):
    name: str = Field(
        min_length=1,
        max_length=320,
        pattern=r"^[^\s\x00-\x1f\x7f]+$",
        description="the login name (no blanks), matched exactly",
    )
    password: str = Field(min_length=12, max_length=1024, description="at least 12 characters")


class SubmissionUserPublic(BaseModel):
    name: str
    source: str = Field(description="database (managed here) or settings (submission.users)")
    created_at: UtcDateTime | None
    created_by: str | None


class SubmissionUserList(BaseModel):
    count: int
    users: list[SubmissionUserPublic]


def _store(request: Request) -> SubmissionUserStore:
    return SubmissionUserStore(request.app.state.repository.engine)


def _public(user: SubmissionUser) -> SubmissionUserPublic:
    return SubmissionUserPublic(
        name=user.name, source="database", created_at=user.created_at, created_by=user.created_by
    )


@router.post(
    "",
    response_model=SubmissionUserPublic,
    status_code=status.HTTP_201_CREATED,
    responses=problems(409),
)
async def create_user(
    body: SubmissionUserCreate,
    request: Request,
    caller: AdminDep,
    audit: AuditDep,
    settings: SettingsDep,
) -> SubmissionUserPublic:
    """Add a user; 409 if the name exists (here or in the settings)."""
    if body.name in settings.submission.users:
        raise HTTPException(status.HTTP_409_CONFLICT, f"{body.name!r} is a user of the settings")
    hashed = await asyncio.to_thread(hash_password, body.password)
    try:
        user = await _store(request).create(body.name, hashed, caller.actor)
    except UserExists:
        raise HTTPException(status.HTTP_409_CONFLICT, f"{body.name!r} exists") from None
    await audit.record(caller, "submission_user_added", None, body.name)
    return _public(user)


@router.get("", response_model=SubmissionUserList)
async def list_users(
    request: Request, caller: AdminDep, settings: SettingsDep
) -> SubmissionUserList:
    """Every user: those of the settings, then those of the database, by name."""
    users = [
        SubmissionUserPublic(name=name, source="settings", created_at=None, created_by=None)
        for name in sorted(settings.submission.users)
    ]
    users += [_public(user) for user in await _store(request).list()]
    return SubmissionUserList(count=len(users), users=users)


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problems(409),
)
async def delete_user(
    name: str, request: Request, caller: AdminDep, audit: AuditDep, settings: SettingsDep
) -> Response:
    """Remove a user: the next AUTH with that name fails (sessions logged in stay so)."""
    if name in settings.submission.users:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"{name!r} is a user of the settings: remove it there"
        )
    if not await _store(request).delete(name):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no submission user {name!r}")
    await audit.record(caller, "submission_user_removed", None, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
