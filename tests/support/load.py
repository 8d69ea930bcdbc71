"""Load for fault tests: numbered messages sent the way a real MTA sends them (a 4xx reply, a
refused or dropped connection means "try again shortly"), and a tally at the sink of what
arrived, so every message that got a 250 can be accounted for.

A message whose DATA got no reply at all (the connection dropped after the final dot) is
"ambiguous": the sender cannot know whether it was accepted and sends it again, as an MTA
would. A second copy of such a message at the sink is the sender's doing, not a duplicate
made by the gateway; the tally counts the two apart.
"""

from __future__ import annotations

import re
import smtplib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from tests.harness import QueueIdSMTP, Sink, make_message


@dataclass
class Load:
    port: int
    token: str
    count: int
    sessions: int = 4
    rcpt: str = "bob@example.test"
    # Give up on a message after this long (a real MTA keeps trying for days).
    give_up_after: float = 180.0
    # Pause between two messages of one session (0: as fast as possible).
    pace: float = 0.0
    accepted: dict[int, str] = field(default_factory=dict)  # number -> queue id
    refused: dict[int, str] = field(default_factory=dict)  # number -> permanent (5xx) reply
    ambiguous: set[int] = field(default_factory=set)  # DATA sent, no reply seen
    temporary_replies: Counter[str] = field(default_factory=Counter)  # "451", "refused"...
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def body(self, number: int) -> str:
        return f"load {self.token} {number}"

    def start(self) -> Load:
        for session in range(self.sessions):
            numbers = list(range(session, self.count, self.sessions))
            thread = threading.Thread(target=self._session, args=(numbers,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        alive = sum(thread.is_alive() for thread in self._threads)
        assert not alive, f"{alive} sending sessions still running after {timeout}s"

    @property
    def done(self) -> int:
        with self._lock:
            return len(self.accepted) + len(self.refused)

    def _session(self, numbers: list[int]) -> None:
        client: QueueIdSMTP | None = None
        for number in numbers:
            message = make_message(
                "alice@outside.test", [self.rcpt], self.body(number), f"load {number}"
            ).as_bytes()
            deadline = time.monotonic() + self.give_up_after
            while time.monotonic() < deadline:
                try:
                    if client is None:
                        client = QueueIdSMTP("127.0.0.1", self.port, timeout=30)
                        client.ehlo("load.test")
                    outcome = self._send_one(client, number, message)
                except (smtplib.SMTPException, OSError) as exc:
                    self._note(type(exc).__name__)
                    client = _drop(client)
                    time.sleep(0.2)
                    continue
                if outcome == "again":
                    client = _drop(client)
                    time.sleep(0.2)
                    continue
                break
            if self.pace:
                time.sleep(self.pace)
        _drop(client)

    def _send_one(self, client: QueueIdSMTP, number: int, message: bytes) -> str:
        """'done' (250 or 5xx recorded) or 'again' (a temporary refusal)."""
        code, text = client.mail("alice@outside.test")
        if code == 250:
            code, text = client.rcpt(self.rcpt)
        if code == 250:
            try:
                code, text = client.data(message)
            except smtplib.SMTPServerDisconnected:
                with self._lock:
                    self.ambiguous.add(number)
                raise
        if code == 250:
            with self._lock:
                self.accepted[number] = client.last_queue_id
            return "done"
        if 400 <= code < 500:
            self._note(str(code))
            return "again"
        with self._lock:
            self.refused[number] = f"{code} {text.decode(errors='replace')}"
        return "done"

    def _note(self, what: str) -> None:
        with self._lock:
            self.temporary_replies[what] += 1


def _drop(client: QueueIdSMTP | None) -> None:
    if client is not None:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()
    return None


@dataclass
class Tally:
    """What arrived at the sink, against what the gateway accepted."""

    accepted: int
    delivered: int  # distinct accepted messages that arrived
    lost: list[int]  # accepted (250) but never arrived
    duplicated: dict[int, int]  # arrived more than once, not explained by the sender
    resent: int  # extra copies of ambiguous messages (the sender sent them twice)

    def __str__(self) -> str:
        return (
            f"accepted={self.accepted} delivered={self.delivered} "
            f"duplicated={len(self.duplicated)} lost={len(self.lost)} "
            f"(sender resends after a dropped DATA: {self.resent})"
        )


def arrived(load: Load, sink: Sink) -> Counter[int]:
    """How many copies of each numbered message reached ``sink``."""
    numbered = re.compile(rf"load {load.token} (\d+)\r?\n".encode())
    copies: Counter[int] = Counter()
    for message in sink.with_token(load.token):
        found = numbered.search(message.data)
        if found:
            copies[int(found.group(1))] += 1
    return copies


def tally(load: Load, sink: Sink) -> Tally:
    arrived_copies = arrived(load, sink)
    accepted = set(load.accepted)
    duplicated, resent = {}, 0
    for number, copies in arrived_copies.items():
        if copies > 1:
            if number in load.ambiguous:
                resent += copies - 1
            else:
                duplicated[number] = copies
    return Tally(
        accepted=len(accepted),
        delivered=len(accepted & set(arrived_copies)),
        lost=sorted(accepted - set(arrived_copies)),
        duplicated=duplicated,
        resent=resent,
    )
