"""Learning the feedback the API recorded: a loop of the scanner service. Every
``scanner.classifier.poll_interval`` seconds it claims pending rows of the ``feedback`` table
(``moat/feedback.py``: one replica per row), reads each message's spooled copy, learns it
through the classifier's store (every replica picks the new weights up at its next poll), and
settles the row with the result: ``learned``, ``already``, ``gone`` (the copy was removed:
delivered mail, or purged) or ``failed: <why>``.

Rows are looked for every ``feedback_interval`` seconds; when a replica learned something it
broadcasts it on the ``feedback.learned`` fanout exchange (``LearnedBroadcast``) and every
replica merges the new weights at once, not at its next ``poll_interval``."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from moat.fanout import Fanout
from moat.feedback import FeedbackQueue
from moat.spool import MessageStore
from moat.topology import FEEDBACK_LEARNED
from services.scanner.classifier.engine import Classifier

log = logging.getLogger("scanner")


class FeedbackLearner:
    def __init__(
        self,
        queue: FeedbackQueue,
        store: MessageStore,
        classifier: Classifier,
        on_learned: Callable[[int], Awaitable[object]] | None = None,
    ) -> None:
        self.queue = queue
        self.store = store
        self.classifier = classifier
        self.on_learned = on_learned  # called with the new generation after a batch learned

    async def run_once(self) -> int:
        """Learn what is pending now; how many rows this replica settled."""
        settled = 0
        while batch := await self.queue.claim():
            learned = False
            for item in batch:
                result = await self._learn(item.message_id, item.label, item.source)
                await self.queue.settle(item.id, result)
                log.info(
                    "feedback %d: %s as %s: %s",
                    item.id,
                    item.message_id,
                    item.label,
                    result,
                    extra={"queue_id": item.message_id},
                )
                settled += 1
                learned = learned or result == "learned"
            if learned and self.on_learned is not None:
                await self.on_learned(self.classifier.generation)
        return settled

    async def _learn(self, message_id: str, label: str, source: str) -> str:
        try:
            raw = await self.store.read(message_id)
        except (FileNotFoundError, ValueError):
            return "gone"
        try:
            learned = await self.classifier.learn(raw, label == "spam", source, message_id)
        except Exception as exc:
            log.exception(
                "feedback on %s could not be learned", message_id, extra={"queue_id": message_id}
            )
            return f"failed: {type(exc).__name__}"
        return "learned" if learned.learned else "already"


class LearnedBroadcast:
    """``feedback.learned`` for one replica: tells the others what it learned, and merges
    what any replica learned (itself included: then there is nothing new) as soon as told."""

    def __init__(self, url: str, classifier: Classifier) -> None:
        self.classifier = classifier
        self.fanout = Fanout(url, FEEDBACK_LEARNED, self._told)

    def start(self) -> None:
        self.fanout.start()

    async def close(self) -> None:
        await self.fanout.close()

    async def learned(self, generation: int) -> bool:
        return await self.fanout.publish(json.dumps({"generation": generation}).encode())

    async def _told(self, body: bytes) -> None:
        try:
            generation = int(json.loads(body)["generation"])
        except (ValueError, KeyError, TypeError):
            log.warning("feedback.learned: a notice that is not ours: %r", body[:100])
            return
        if generation > self.classifier.generation:
            await self.classifier.refresh(force=True)
        log.info(
            "classifier at feedback generation %d (told of %d)",
            self.classifier.generation,
            generation,
        )
