"""The classifier in service: the shipped model, the learned deltas merged over it, and
learning one message. Shared by the check, the ``learn`` command and the feedback API."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from moat.settings import ClassifierSettings
from services.scanner.checks.base import ParsedMessage, parse
from services.scanner.classifier.model import SHIPPED_MODEL, Features, Model
from services.scanner.classifier.store import FeedbackStore, Learned, message_digest
from services.scanner.classifier.tokenizer import tokens

log = logging.getLogger(__name__)

# Below this size tokenising takes about a millisecond or less: cheaper than a hop to a thread.
INLINE_TOKENIZE_LIMIT = 8 * 1024


@dataclass(frozen=True)
class LearnResult:
    digest: str
    label: str
    learned: bool  # False: already learned with this label; nothing changed
    generation: int
    probability_before: float


class Classifier:
    def __init__(
        self, settings: ClassifierSettings, engine: AsyncEngine | None, model: Model | None = None
    ) -> None:
        self.settings = settings
        self.model = (
            model if model is not None else Model.load(settings.model_path or SHIPPED_MODEL)
        )
        self.store = FeedbackStore(engine) if engine is not None else None
        self.generation = 0
        self._polled_at = float("-inf")
        self._polling = asyncio.Lock()
        self._warned = False

    # --- classifying ---------------------------------------------------------------------------

    def features_of(self, message: ParsedMessage, max_text: int | None = None) -> Features:
        limit = self.settings.max_text_bytes if max_text is None else max_text
        return self.model.features(tokens(message, limit))

    async def features(self, message: ParsedMessage, max_text: int | None = None) -> Features:
        if len(message.raw) > INLINE_TOKENIZE_LIMIT:
            return await asyncio.to_thread(self.features_of, message, max_text)
        return self.features_of(message, max_text)

    async def probability(self, message: ParsedMessage, max_text: int | None = None) -> float:
        await self.refresh()
        return self.model.probability(await self.features(message, max_text))

    # --- learned feedback ----------------------------------------------------------------------

    async def refresh(self, force: bool = False) -> bool:
        """Merge the deltas learned since the last look, if ``poll_interval`` has passed (or
        ``force``). A database that cannot be read is logged, and the weights in force stay;
        with ``force`` (before learning) the error is raised."""
        if self.store is None:
            return False
        interval = self.settings.poll_interval
        if not force and (interval <= 0 or time.monotonic() - self._polled_at < interval):
            return False
        if self._polling.locked() and not force:
            return False  # another message is polling right now: don't wait for it
        async with self._polling:
            try:
                generation, deltas = await self.store.poll(self.generation)
            except Exception as exc:
                self._polled_at = time.monotonic()
                if force:
                    raise
                if not self._warned:
                    log.warning(
                        "classifier: cannot read learned feedback (%r); using the weights in force",
                        exc,
                    )
                    self._warned = True
                return False
            self._polled_at = time.monotonic()
            self._warned = False
            if deltas:
                self.model.apply_deltas(deltas)
            changed = generation != self.generation
            if changed:
                log.info(
                    "classifier: feedback generation %d (%d features changed)",
                    generation,
                    len(deltas),
                )
            self.generation = generation
            return changed

    async def learn(
        self, raw: bytes, spam: bool, source: str, message_id: str | None = None
    ) -> LearnResult:
        """Learn one message as spam or ham into the store (raises if it cannot be written)."""
        if self.store is None:
            raise RuntimeError("no database to learn into")
        await self.refresh(force=True)
        label = "spam" if spam else "ham"
        digest = message_digest(raw)
        features = await asyncio.to_thread(
            self.features_of, parse(message_id or "learn", raw), None
        )
        before = self.model.probability(features)
        if await self.store.label_of(digest) == label:
            return LearnResult(digest, label, False, self.generation, before)
        saved = self.model.weights[features].copy()
        total = self.model.update(
            features,
            spam,
            self.settings.learn_rate,
            self.settings.learn_max_steps,
            self.settings.learn_margin,
        )
        self.model.weights[features] = saved  # the store's totals are what counts: refresh
        deltas = {int(f): float(d) for f, d in zip(features, total, strict=True) if d}
        result: Learned = await self.store.learn(digest, label, deltas, source, message_id)
        await self.refresh(force=True)
        return LearnResult(digest, label, result.learned, result.generation, before)

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()
