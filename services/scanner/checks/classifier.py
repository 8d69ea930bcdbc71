"""The statistical spam classifier as a check: one finding per message, the probability's
band BAYES_00..BAYES_999 as SpamAssassin names them (scores in moat/symbols.py), with the spam
probability (see docs/checks/classifier.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from moat.db import create_engine
from moat.model import Finding
from moat.settings import Settings
from moat.symbols import SymbolTable, bayes_band
from services.scanner.checks.base import ParsedMessage

if TYPE_CHECKING:
    from services.scanner.classifier.engine import Classifier


def finding(name: str, probability: float, table: SymbolTable) -> Finding:
    """The finding for a spam probability: its band (BAYES_00..BAYES_999) as the table
    scores it, with the probability."""
    rounded = round(probability, 6)
    return table.finding(
        name, bayes_band(probability), f"spam probability {rounded:.4f}", probability=rounded
    )


class ClassifierCheck:
    """Loads the model at start (a missing or broken model fails start-up, not each message);
    learned feedback is read from the database every ``poll_interval`` seconds."""

    name = "classifier"

    def __init__(self, settings: Settings, classifier: Classifier | None = None) -> None:
        section = settings.scanner.classifier
        if classifier is None:
            # Imported here: the classifier package uses checks.base, whose package imports us.
            from services.scanner.classifier.engine import Classifier

            engine = create_engine(settings.database_url) if section.poll_interval > 0 else None
            classifier = Classifier(section, engine)
        self.classifier = classifier

    async def check(self, message: ParsedMessage) -> list[Finding]:
        policy = message.policy.classifier
        if not policy.enabled:
            return []
        probability = await self.classifier.probability(message, policy.max_text_bytes)
        return [finding(self.name, probability, message.policy.symbol_table)]
