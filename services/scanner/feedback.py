"""Learning the feedback the API recorded: a loop of the scanner service. Every
``scanner.classifier.poll_interval`` seconds it claims pending rows of the ``feedback`` table
(``moat/feedback.py``: one replica per row), reads each message's spooled copy, learns it
through the classifier's store (every replica picks the new weights up at its next poll), and
settles the row with the result: ``learned``, ``already``, ``gone`` (the copy was removed:
delivered mail, or purged) or ``failed: <why>``."""

from __future__ import annotations

import logging

from moat.feedback import FeedbackQueue
from moat.spool import MessageStore
from services.scanner.classifier.engine import Classifier

log = logging.getLogger("scanner")


class FeedbackLearner:
    def __init__(self, queue: FeedbackQueue, store: MessageStore, classifier: Classifier) -> None:
        self.queue = queue
        self.store = store
        self.classifier = classifier

    async def run_once(self) -> int:
        """Learn what is pending now; how many rows this replica settled."""
        settled = 0
        while batch := await self.queue.claim():
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
