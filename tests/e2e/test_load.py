"""1,000 messages over 20 concurrent SMTP sessions: all delivered, none duplicated."""

from __future__ import annotations

import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.harness import Gateway, Sink, make_message, wait_for

pytestmark = pytest.mark.e2e

MESSAGES, SESSIONS = 1000, 20


def test_a_thousand_messages_over_twenty_sessions(
    gateway: Gateway, relay_sink: Sink, token: str
) -> None:
    before = gateway.statuses().get("delivered", 0)

    def session(number: int) -> list[str]:
        ids = []
        with gateway.smtp() as client:
            client.ehlo(f"client{number}.test")
            for i in range(number, MESSAGES, SESSIONS):
                message = make_message(
                    f"sender{number}@outside.test",
                    ["bob@example.test"],
                    f"load {token} {i}\n" + "lorem ipsum " * 300,
                    f"load {i}",
                )
                client.sendmail(
                    f"sender{number}@outside.test", ["bob@example.test"], message.as_bytes()
                )
                ids.append(client.last_queue_id)
        return ids

    started = time.monotonic()
    with ThreadPoolExecutor(SESSIONS) as pool:
        ids = [i for batch in pool.map(session, range(SESSIONS)) for i in batch]
    accepted = time.monotonic() - started
    assert len(set(ids)) == MESSAGES

    wait_for(
        lambda: gateway.statuses().get("delivered", 0) - before >= MESSAGES,
        240,
        "every message delivered",
        interval=0.5,
    )
    delivered = time.monotonic() - started
    assert gateway.ready("scan") == gateway.ready("deliver") == 0
    numbered = re.compile(rf"load {token} (\d+)".encode())
    arrived = Counter(numbered.findall(m.data)[0] for m in relay_sink.with_token(token))
    assert len(arrived) == MESSAGES
    duplicated = {number: n for number, n in arrived.items() if n > 1}
    assert not duplicated, f"delivered more than once: {duplicated}"
    # Delivered mail leaves nothing behind in the spool.
    spooled = {path.stem for path in (gateway.workdir / "spool").rglob("*.eml")}
    assert spooled & set(ids) == set()
    print(
        f"\n{MESSAGES} messages: accepted in {accepted:.1f}s ({MESSAGES / accepted:.0f}/s), "
        f"delivered in {delivered:.1f}s ({MESSAGES / delivered:.0f}/s)"
    )
