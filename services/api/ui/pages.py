"""The quarantine web page: server-rendered HTML under ``/ui/``, no script anywhere.

Sign in with a token (or a one-time sign-in link from a digest), see the held mail you may see
(everyone's for administrators and readers), read a message's safe preview, and release,
delete, block or allow its sender. One-click links from digests open a confirmation page whose
form does the action, so a mail scanner that fetches every link in a message acts on nothing.

Every action goes through the quarantine service layer (``services/api/quarantine.py``), as
the REST routes do. Every response carries the security headers of ``SECURITY_HEADERS``; every
form carries a CSRF token (``sessions.py``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from moat.mime import MainHeaders, preview
from moat.repository import MessageRecord
from moat.sender_rules import RuleAction, SenderRuleStore
from moat.settings import Settings
from moat.spool import MessageStore
from services.api.audit import AuditLog
from services.api.auth import BOOTSTRAP_ADMIN, Principal, Role, TokenStore
from services.api.held import entry_of, held_page
from services.api.links import Action, Link, LinkRefused, Links, Refusal
from services.api.quarantine import Quarantine, Refused, held_for, may_release
from services.api.senders import list_message_sender
from services.api.ui.sessions import CSRF_COOKIE, SESSION_COOKIE, Session, Sessions, link_principal

log = logging.getLogger("api")

HERE = Path(__file__).parent
PAGE_SIZE = 25
FORM_LIMIT = 16 * 1024  # bytes of a form body: a token and a CSRF field fit many times over

SECURITY_HEADERS = {
    # No script, no remote content, no framing; styles from our own stylesheet only.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Strict-Transport-Security": "max-age=31536000",
    "Cache-Control": "no-store",  # pages show mail: no copy in shared or browser caches
}

# What a finished action says on the page it returns to (a fixed text per key: the query
# string chooses one, it never supplies text).
NOTICES = {
    "released": "Released: it is on its way to the mailbox.",
    "deleted": "Deleted.",
    "blocked": "The sender is blocked: their mail will be held.",
    "allowed": "The sender is allowed.",
}

PROBLEM_HEADINGS = {
    400: "This cannot be done",
    401: "Sign in first",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed",
    409: "Nothing to do",
    410: "This link has expired",
    413: "Too much",
    415: "Not a form",
    422: "This cannot be done",
    500: "Something went wrong",
}


def make_templates() -> Environment:
    return Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@dataclass(frozen=True)
class PageAction:
    name: str
    label: str
    style: str = ""


class Visit:
    """One request's view of who is asking, and the page it gets."""

    def __init__(
        self, templates: Environment, sessions: Sessions, request: Request, session: Session | None
    ) -> None:
        self.templates = templates
        self.sessions = sessions
        self.request = request
        self.session = session
        seed = request.cookies.get(CSRF_COOKIE)
        self.new_seed = None if seed else secrets.token_urlsafe(24)
        self.seed = seed or self.new_seed or ""

    @property
    def principal(self) -> Principal | None:
        return self.session.principal if self.session else None

    def render(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("who", self.session.label if self.session else None)
        context.setdefault("notice", None)
        context["csrf"] = self.sessions.csrf_token(self.seed)
        response = HTMLResponse(self.templates.get_template(name).render(context), status)
        if self.new_seed:
            response.set_cookie(
                CSRF_COOKIE, self.new_seed, httponly=True, secure=True, samesite="strict"
            )
        return response

    def problem(self, status: int, detail: str, *, nothing_done: bool = False) -> HTMLResponse:
        heading = PROBLEM_HEADINGS.get(status, "This cannot be done")
        return self.render(
            "problem.html", status, heading=heading, detail=detail, nothing_done=nothing_done
        )


def redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


class FormRefused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def create_ui(
    settings: Settings,
    store: MessageStore,
    quarantine: Quarantine,
    tokens: TokenStore,
    links: Links,
    sessions: Sessions,
    audit: AuditLog,
    templates: Environment,
    sender_rules: SenderRuleStore,
) -> FastAPI:
    """The web page, an application of its own mounted at ``/ui`` (not in the API's schema:
    it answers HTML, not problem details)."""
    ui = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    engine = quarantine.repository.engine
    admin_token = settings.admin_token.get_secret_value()

    async def visit(request: Request) -> Visit:
        session = await sessions.current(request.cookies.get(SESSION_COOKIE))
        return Visit(templates, sessions, request, session)

    async def form(request: Request, v: Visit) -> dict[str, str]:
        """The posted form, CSRF-checked; ``FormRefused`` otherwise."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            raise FormRefused(415, "This page takes a form.")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > FORM_LIMIT:
                raise FormRefused(413, "The form is larger than this page takes.")
        fields = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        if not sessions.csrf_ok(request.cookies.get(CSRF_COOKIE), fields.get("csrf")):
            raise FormRefused(
                403,
                "The form has expired or came from another site. Go back, reload the page "
                "and try again (cookies must be allowed for this site).",
            )
        return fields

    @ui.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        try:
            response = await call_next(request)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            v = Visit(templates, sessions, request, None)
            response = v.problem(500, "The page could not be shown; see the API's log.")
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @ui.exception_handler(StarletteHTTPException)
    async def http_problem(request: Request, exc: StarletteHTTPException) -> Response:
        v = Visit(templates, sessions, request, None)
        detail = "There is no such page." if exc.status_code == 404 else str(exc.detail)
        return v.problem(exc.status_code, detail)

    @ui.exception_handler(FormRefused)
    async def form_refused(request: Request, exc: FormRefused) -> Response:
        v = await visit(request)
        return v.problem(exc.status, exc.detail, nothing_done=True)

    @ui.get("/static/moat.css")
    async def stylesheet() -> Response:
        return Response(
            (HERE / "static" / "moat.css").read_bytes(),
            media_type="text/css",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    # --- signing in and out ---

    @ui.get("/signin")
    async def signin_page(request: Request) -> Response:
        v = await visit(request)
        if v.session is not None:
            return redirect("/ui/")
        return v.render("signin.html", error=None)

    @ui.post("/signin")
    async def signin(request: Request) -> Response:
        v = await visit(request)
        fields = await form(request, v)
        given = fields.get("token", "").strip()
        principal: Principal | None = None
        if given and secrets.compare_digest(given.encode(), admin_token.encode()):
            principal = BOOTSTRAP_ADMIN
        elif given:
            principal = await tokens.authenticate(given)
        if principal is None:
            return v.render(
                "signin.html", 401, error="That token is not valid (unknown, revoked or expired)."
            )
        await audit.record(principal, "signed_in", None, "web page")
        return start_session(principal)

    def start_session(principal: Principal) -> Response:
        response = redirect("/ui/")
        response.set_cookie(
            SESSION_COOKIE,
            sessions.issue(principal),
            max_age=int(sessions.ttl),
            httponly=True,
            secure=True,
            samesite="strict",
        )
        return response

    @ui.post("/signout")
    async def signout(request: Request) -> Response:
        v = await visit(request)
        await form(request, v)
        if v.session is not None:
            await sessions.end(v.session)
        response = redirect("/ui/signin")
        response.delete_cookie(SESSION_COOKIE, httponly=True, secure=True, samesite="strict")
        return response

    # --- the list and one message ---

    @ui.get("/")
    async def held_list(request: Request, before: str | None = None) -> Response:
        v = await visit(request)
        if v.principal is None:
            return redirect("/ui/signin")
        if before is not None and not (before.isalnum() and len(before) <= 26):
            before = None
        entries, more = await held_page(engine, store, v.principal, before=before, limit=PAGE_SIZE)
        return v.render(
            "list.html",
            entries=entries,
            next=more,
            before=before,
            everyone=v.principal.sees_everything,
            notice=NOTICES.get(request.query_params.get("done", "")),
        )

    @ui.get("/messages/{message_id}")
    async def message_page(request: Request, message_id: str) -> Response:
        v = await visit(request)
        if v.principal is None:
            return redirect("/ui/signin")
        try:
            record = await quarantine.visible(v.principal, message_id)
        except Refused as refused:
            return v.problem(refused.status, "There is no such message among yours.")
        try:
            raw = await store.read(record.id)
            shown = await asyncio.to_thread(preview, raw)
        except FileNotFoundError:
            shown = None
        caller = v.principal
        held = held_for(caller, record) if caller.may_change else []
        actions = []
        if held and may_release(caller, record):
            actions.append(PageAction("release", "Release"))
        if held:
            actions.append(PageAction("delete", "Delete", "danger"))
        if caller.may_change and record.mail_from:
            actions.append(PageAction("block", f"Block {record.mail_from}", "quiet"))
            actions.append(PageAction("allow", f"Allow {record.mail_from}", "quiet"))
        subject = (shown.headers.subject if shown else None) or record.subject or "(no subject)"
        return v.render(
            "message.html",
            record=record,
            subject=subject,
            headers=shown.headers if shown else _headers_of(record),
            preview=shown,
            held=held,
            actions=actions,
            admin_only=bool(held) and not may_release(caller, record),
            findings=sorted((f for f in record.findings or [] if f.score), key=lambda f: -f.score),
            notice=NOTICES.get(request.query_params.get("done", "")),
        )

    @ui.post("/messages/{message_id}/{action}")
    async def message_action(request: Request, message_id: str, action: str) -> Response:
        v = await visit(request)
        await form(request, v)
        caller = v.principal
        if caller is None:
            return redirect("/ui/signin")
        if action not in ("release", "delete", "block", "allow"):
            return v.problem(404, "There is no such action.")
        try:
            if action == "release":
                await quarantine.release(caller, message_id)
                return redirect(f"/ui/messages/{message_id}?done=released")
            if action == "delete":
                await quarantine.delete(caller, message_id)
                return redirect("/ui/?done=deleted")
            record = await quarantine.visible(caller, message_id)
            await list_message_sender(
                caller,
                record,
                RuleAction.BLOCK if action == "block" else RuleAction.ALLOW,
                sender_rules,
                audit,
                settings,
                note=f"from quarantined message {record.id}",
            )
            return redirect(f"/ui/messages/{message_id}?done={action}ed")
        except Refused as refused:
            return v.problem(refused.status, refused.detail, nothing_done=True)

    # --- one-click links (digests) ---

    def link_refusal(v: Visit, refused: LinkRefused) -> Response:
        if refused.why == Refusal.EXPIRED:
            return v.problem(
                410,
                "This link has expired. Sign in to see what is held for you.",
                nothing_done=True,
            )
        if refused.why == Refusal.USED:
            return v.problem(409, "This link was used already: it works once.", nothing_done=True)
        return v.problem(
            400,
            "This link is not valid: it was changed, or cut short when it was copied.",
            nothing_done=True,
        )

    async def checked_link(token: str) -> tuple[Link, Principal, MessageRecord | None]:
        """The link, unused, for a message addressed to its recipient; raises LinkRefused or
        Refused."""
        link = links.read(token)
        if await links.used_at(link.nonce) is not None:
            raise LinkRefused(Refusal.USED, link)
        principal = link_principal(link.recipient)
        if link.action == Action.SIGNIN:
            return link, principal, None
        principal = Principal(Role.USER, "digest link", None, link.recipient)
        try:
            record = await quarantine.visible(principal, link.message_id)
        except Refused:
            raise Refused(404, "This link is not for a message held for its recipient.") from None
        return link, principal, record

    @ui.get("/link/{token}")
    async def link_page(request: Request, token: str) -> Response:
        v = await visit(request)
        try:
            link, principal, record = await checked_link(token)
        except LinkRefused as refused:
            return link_refusal(v, refused)
        except Refused as refused:
            return v.problem(refused.status, refused.detail, nothing_done=True)
        entry = await entry_of(store, record.model_dump()) if record else None
        sender = record.mail_from if record else ""
        texts = {
            Action.RELEASE: (
                "Release this message?",
                "It will be delivered to your mailbox.",
                "Release it",
                "",
            ),
            Action.DELETE: (
                "Delete this message?",
                "It will be removed from quarantine for you. This cannot be undone.",
                "Delete it",
                "danger",
            ),
            Action.BLOCK: (
                "Block this sender?",
                f"From now on, mail from {sender} to {link.recipient} will be held.",
                f"Block {sender}",
                "danger",
            ),
            Action.SIGNIN: (
                "Sign in to your quarantine?",
                f"You will see the mail held for {link.recipient}.",
                "Sign in",
                "",
            ),
        }
        heading, explain, button, style = texts[link.action]
        if link.action == Action.RELEASE and record and not may_release(principal, record):
            return v.problem(
                403,
                f"{record.verdict} quarantine is released by an administrator.",
                nothing_done=True,
            )
        return v.render(
            "link.html",
            heading=heading,
            explain=explain,
            button=button,
            style=style,
            token=token,
            entry=entry,
            recipient=link.recipient,
        )

    @ui.post("/link/{token}")
    async def use_link(request: Request, token: str) -> Response:
        v = await visit(request)
        await form(request, v)
        try:
            link, principal, record = await checked_link(token)
            await links.use(link)
        except LinkRefused as refused:
            return link_refusal(v, refused)
        except Refused as refused:
            return v.problem(refused.status, refused.detail, nothing_done=True)
        try:
            if link.action == Action.SIGNIN:
                await audit.record(principal, "signed_in", None, "sign-in link")
                return start_session(principal)
            if link.action == Action.RELEASE:
                await quarantine.release(principal, link.message_id)
                heading, detail = "Released", "The message is on its way to your mailbox."
            elif link.action == Action.DELETE:
                await quarantine.delete(principal, link.message_id)
                heading, detail = "Deleted", "The message is deleted."
            else:
                assert record is not None
                await list_message_sender(
                    principal,
                    record,
                    RuleAction.BLOCK,
                    sender_rules,
                    audit,
                    settings,
                    note=f"from a digest link for message {record.id}",
                )
                heading = "Sender blocked"
                detail = f"Mail from {record.mail_from} to {link.recipient} will be held."
        except Refused as refused:
            return v.problem(refused.status, refused.detail, nothing_done=True)
        except Exception:
            await links.give_back(link)  # our failure, not the link's: it may be tried again
            raise
        return v.render("done.html", heading=heading, detail=detail)

    return ui


def _headers_of(record: MessageRecord) -> MainHeaders:
    return MainHeaders(subject=record.subject, from_=record.header_from)
