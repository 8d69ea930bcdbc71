"""moat-admin: the quarantine from a shell, over the REST API.

    export MOAT_API_TOKEN=moat_...            # an API token (or the admin token)
    moat-admin --url https://moat.example.com:8443 list --status quarantined
    moat-admin show 01J...
    moat-admin release 01J... [--recipient bob@example.com] [--rescan]
    moat-admin delete 01J...
    moat-admin block 01J...                   # block the sender of that message

(``python -m services.api.cli`` is the same.) It talks to the API only: any machine that
reaches the API can run it. Exit status: 0 done; 1 refused by the API (403, 422, ...); 2 bad
usage; 3 no such message (404); 4 nothing to do (409, e.g. released already); 5 not signed in
(no token, or the API refused it: 401); 6 the API could not be reached or failed (network,
TLS, 5xx): try again later.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from collections.abc import Sequence
from typing import Any

import httpx

OK, REFUSED, USAGE, NOT_FOUND, CONFLICT, UNAUTHORIZED, UNAVAILABLE = 0, 1, 2, 3, 4, 5, 6
DEFAULT_URL = "https://127.0.0.1:8443"


class Failed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="moat-admin",
        description="The Moat quarantine over the REST API.",
        epilog="The token comes from MOAT_API_TOKEN. Exit status: 0 done, 1 refused, 2 usage, "
        "3 not found, 4 nothing to do (conflict), 5 not signed in, 6 API unreachable or failing.",
    )
    top.add_argument(
        "--url",
        default=os.environ.get("MOAT_API_URL", DEFAULT_URL),
        help=f"the API's address (MOAT_API_URL; default {DEFAULT_URL})",
    )
    top.add_argument(
        "--ca-file",
        default=os.environ.get("MOAT_API_CA_FILE"),
        help="a CA bundle to trust, e.g. the API's self-signed var/tls/api-cert.pem "
        "(MOAT_API_CA_FILE; default: the system's)",
    )
    top.add_argument("--json", action="store_true", help="print the API's JSON as it came")
    top.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="search messages, newest first")
    listing.add_argument("--status", help="e.g. quarantined (the default), delivered")
    listing.add_argument("--verdict", help="spam, virus, policy, clean")
    listing.add_argument("--sender", help="envelope sender")
    listing.add_argument("--recipient")
    listing.add_argument("--subject", help="part of the subject")
    listing.add_argument("--since", help="received at or after (ISO 8601)")
    listing.add_argument("--until", help="received before (ISO 8601)")
    listing.add_argument("--limit", type=int, default=50, help="messages per page")
    listing.add_argument("--all", action="store_true", help="follow every page")

    show = commands.add_parser("show", help="a message: verdict, findings, recipients, timeline")
    show.add_argument("id")

    release = commands.add_parser("release", help="let a held message go")
    release.add_argument("id")
    release.add_argument(
        "--recipient", action="append", help="only these recipients (repeat); default all held"
    )
    release.add_argument("--rescan", action="store_true", help="scan it again instead")

    remove = commands.add_parser("delete", help="delete a held message")
    remove.add_argument("id")

    block = commands.add_parser("block", help="block the sender of a message")
    block.add_argument("id")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    token = os.environ.get("MOAT_API_TOKEN", "")
    if not token:
        print("moat-admin: set MOAT_API_TOKEN to an API token", file=sys.stderr)
        return UNAUTHORIZED
    try:
        verify: ssl.SSLContext | bool = True
        if args.ca_file:
            verify = ssl.create_default_context(cafile=args.ca_file)
        with httpx.Client(
            base_url=args.url.rstrip("/"),
            verify=verify,
            timeout=args.timeout,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "moat-admin"},
        ) as client:
            run(client, args)
    except Failed as failed:
        print(f"moat-admin: {failed.message}", file=sys.stderr)
        return failed.code
    except (OSError, ssl.SSLError) as exc:  # e.g. an unreadable CA file
        print(f"moat-admin: {exc}", file=sys.stderr)
        return UNAVAILABLE
    return OK


def run(client: httpx.Client, args: argparse.Namespace) -> None:
    if args.command == "list":
        list_messages(client, args)
        return
    if args.command == "show":
        message = call(client, "GET", f"/v1/messages/{args.id}")
        print(json.dumps(message, indent=2) if args.json else describe(message))
        return
    if args.command == "release":
        body: dict[str, Any] = {"rescan": args.rescan}
        if args.recipient:
            body["recipients"] = args.recipient
        result = call(client, "POST", f"/v1/messages/{args.id}/release", json=body)
    elif args.command == "delete":
        result = call(client, "DELETE", f"/v1/messages/{args.id}")
    else:
        result = call(client, "POST", f"/v1/messages/{args.id}/block-sender")
    print(json.dumps(result, indent=2) if args.json else outcome(args.command, args.id, result))


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.TimeoutException:
        raise Failed(UNAVAILABLE, f"{client.base_url} did not answer in time") from None
    except httpx.HTTPError as exc:
        raise Failed(UNAVAILABLE, f"cannot reach {client.base_url}: {exc}") from None
    if response.is_success:
        return response.json() if response.content else {}
    try:
        detail = str(response.json().get("detail") or response.reason_phrase)
    except ValueError:
        detail = response.reason_phrase
    status = response.status_code
    code = {401: UNAUTHORIZED, 404: NOT_FOUND, 409: CONFLICT}.get(status)
    if code is None:
        code = UNAVAILABLE if status >= 500 else REFUSED
    raise Failed(code, f"{status} {response.reason_phrase}: {detail}")


def list_messages(client: httpx.Client, args: argparse.Namespace) -> None:
    params = {
        "status": args.status or "quarantined",
        "verdict": args.verdict,
        "sender": args.sender,
        "recipient": args.recipient,
        "subject": args.subject,
        "received_after": args.since,
        "received_before": args.until,
        "limit": args.limit,
    }
    query: dict[str, Any] = {k: v for k, v in params.items() if v is not None}
    while True:
        page = call(client, "GET", "/v1/messages", params=query)
        found = page.get("messages", page.get("items", []))
        if args.json:
            print(json.dumps(page, indent=2))
        else:
            for message in found:
                print(row(message))
        cursor = page.get("next")
        if not (args.all and cursor and found):
            if cursor and not args.all and not args.json:
                print(f"(more: --all, or the next page after {cursor})", file=sys.stderr)
            return
        query["cursor"] = cursor


def _verdict(message: dict[str, Any]) -> tuple[str, str]:
    verdict = message.get("verdict")
    if isinstance(verdict, dict):
        return str(verdict.get("verdict", "")), f"{float(verdict.get('score') or 0):.1f}"
    score = message.get("score")
    return str(verdict or "-"), f"{float(score):.1f}" if score is not None else "-"


def row(message: dict[str, Any]) -> str:
    verdict, score = _verdict(message)
    sender = message.get("from") or message.get("header_from") or message.get("mail_from") or "<>"
    subject = message.get("subject") or ""
    received = str(message.get("received_at", ""))[:19].replace("T", " ")
    return "\t".join(
        [
            str(message.get("id")),
            received,
            str(message.get("status")),
            verdict,
            score,
            sender,
            subject,
        ]
    )


def describe(message: dict[str, Any]) -> str:
    verdict, score = _verdict(message)
    lines = [
        f"id:        {message.get('id')}",
        f"status:    {message.get('status')}",
        f"from:      <{message.get('mail_from', '')}>",
        f"received:  {message.get('received_at')}",
        f"size:      {message.get('size')}",
        f"verdict:   {verdict} (score {score})",
    ]
    if message.get("subject"):
        lines.insert(3, f"subject:   {message['subject']}")
    findings = (
        (message.get("verdict") or {}).get("findings", [])
        if isinstance(message.get("verdict"), dict)
        else []
    )
    for finding in findings:
        lines.append(f"  finding: {finding.get('symbol')} {float(finding.get('score') or 0):+.1f}")
    for recipient in message.get("recipients", []):
        reply = f" ({recipient['reply']})" if recipient.get("reply") else ""
        lines.append(f"  to {recipient.get('address')}: {recipient.get('status')}{reply}")
    for event in message.get("events", []):
        what = f"{event.get('service')} {event.get('event')} {event.get('detail', '')}"
        lines.append(f"  {event.get('at')} {what}".rstrip())
    return "\n".join(lines)


def outcome(command: str, message_id: str, result: Any) -> str:
    done = {"release": "released", "delete": "deleted", "block": "sender blocked"}[command]
    if isinstance(result, dict) and result.get("recipients"):
        recipients = result["recipients"]
        names = ", ".join(r if isinstance(r, str) else str(r.get("address")) for r in recipients)
        return f"{message_id}: {done} ({names})"
    return f"{message_id}: {done}"


if __name__ == "__main__":
    sys.exit(main())
