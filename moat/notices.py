"""Mail Moat writes itself (quarantine digests, answers to release requests): composed here,
spooled, recorded ready for delivery from the null sender, and handed to delivery like any
other mail, so it is retried, tracked and never lost the same way.

The null envelope sender means a notice that cannot be delivered bounces nowhere (no loops,
no backscatter), and ``Auto-Submitted: auto-generated`` (RFC 3834) keeps auto-responders from
answering it.
"""

from __future__ import annotations

import logging
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import formatdate

from moat.broker import Broker, PublishError
from moat.model import DeliveryRequest, new_message_id
from moat.repository import NewMessage, Repository
from moat.spool import MessageStore
from moat.topology import DELIVER

log = logging.getLogger(__name__)


def compose(hostname: str, to: str, subject: str, text: str, html: str | None = None) -> bytes:
    message = EmailMessage(policy=SMTP if to.isascii() else SMTPUTF8)
    message["From"] = f"Moat quarantine <postmaster@{hostname}>"
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = f"<{new_message_id()}@{hostname}>"
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    return message.as_bytes()


async def send_notice(
    repository: Repository,
    store: MessageStore,
    broker: Broker,
    hostname: str,
    *,
    to: str,
    subject: str,
    text: str,
    html: str | None = None,
    service: str = "api",
) -> str:
    """Queue a notice for delivery; returns its message id. Once this returns the notice is
    durable: spooled and recorded. Should the broker not take the delivery request, the
    delivery sweep finds the record and sends it on."""
    message_id = new_message_id()
    data = compose(hostname, to, subject, text, html)
    await store.write(message_id, data)
    await repository.record_notice(
        NewMessage(message_id, "", [to], len(data), smtp_utf8=not to.isascii()), service
    )
    try:
        await broker.publish(DELIVER, DeliveryRequest(message_id=message_id))
    except PublishError as exc:
        log.warning(
            "notice %s recorded, not yet published (%s); the sweep will",
            message_id,
            exc,
            extra={"queue_id": message_id},
        )
    return message_id
