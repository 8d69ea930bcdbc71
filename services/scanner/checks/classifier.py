"""The statistical spam classifier as a check: one finding per message, BAYES_SPAM,
BAYES_UNSURE or BAYES_HAM, with the spam probability (see docs/checks/classifier.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from moat.db import create_engine
from moat.model import Category, Finding
from moat.settings import ClassifierSettings, Settings
from services.scanner.checks.base import ParsedMessage

if TYPE_CHECKING:
    from services.scanner.classifier.engine import Classifier


def finding(name: str, probability: float, policy: ClassifierSettings) -> Finding:
    """The finding for a spam probability under a domain's policy."""
    rounded = round(probability, 6)
    if probability >= policy.spam_probability:
        span = max(1e-9, 1.0 - policy.spam_probability)
        fraction = min(1.0, (probability - policy.spam_probability) / span)
        score = policy.spam_score_min + (policy.spam_score_max - policy.spam_score_min) * fraction
        return Finding(
            check=name,
            symbol="BAYES_SPAM",
            category=Category.SPAM,
            score=round(score, 3),
            detail=f"spam probability {rounded:.4f}",
            probability=rounded,
        )
    if probability <= policy.ham_probability:
        fraction = 1.0 - probability / policy.ham_probability if policy.ham_probability else 1.0
        return Finding(
            check=name,
            symbol="BAYES_HAM",
            category=Category.SPAM,  # a negative score counts towards the total
            score=round(policy.ham_score * fraction, 3),
            detail=f"spam probability {rounded:.4f}",
            probability=rounded,
        )
    return Finding(
        check=name,
        symbol="BAYES_UNSURE",
        category=Category.INFO,
        detail=f"spam probability {rounded:.4f}",
        probability=rounded,
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
        return [finding(self.name, probability, policy)]
