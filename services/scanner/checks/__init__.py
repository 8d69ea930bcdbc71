"""The scanner's checks, registered in one place: ``build_checks``.

Adding a check: write a class with a ``name`` and ``async check(message) -> list[Finding]``
(see ``base.py``) in a module of this package, and add it to ``build_checks``. Engines that need
settings or connections (clamd, DNS, a model) are built here from the settings.
"""

from __future__ import annotations

from moat.dns import Resolver
from moat.model import MessageEnvelope as Envelope
from moat.settings import Settings
from services.scanner.checks.attachments import AttachmentCheck
from services.scanner.checks.auth import AuthCheck
from services.scanner.checks.base import (
    Check,
    ParsedMessage,
    Part,
    parse,
    run_checks,
    validate_registry,
)
from services.scanner.checks.clamav import clamav_checks
from services.scanner.checks.classifier import ClassifierCheck
from services.scanner.checks.headers import HeaderRulesCheck
from services.scanner.checks.reputation import ReputationCheck
from services.scanner.checks.sender_lists import SenderListCheck
from services.scanner.checks.testfiles import EICAR, GTUBE, EicarCheck, GtubeCheck


def build_checks(settings: Settings) -> tuple[Check, ...]:
    """Every check the scanner runs, in one list. A duplicate name fails at start-up."""
    resolver = Resolver(settings.dns)  # one cache for every check that asks DNS
    checks: tuple[Check, ...] = (
        EicarCheck(),
        GtubeCheck(),
        *clamav_checks(settings),
        AttachmentCheck(),
        ClassifierCheck(settings),
        AuthCheck(settings, resolver),
        HeaderRulesCheck(settings),
        ReputationCheck(settings, resolver),
        SenderListCheck(settings),
    )
    validate_registry(checks)
    return checks


__all__ = [
    "EICAR",
    "GTUBE",
    "Check",
    "EicarCheck",
    "Envelope",
    "GtubeCheck",
    "ParsedMessage",
    "Part",
    "build_checks",
    "parse",
    "run_checks",
    "validate_registry",
]
