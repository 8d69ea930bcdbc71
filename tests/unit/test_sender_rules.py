"""Allow and block lists: which rule applies (most specific wins), what a message with several
recipients gets, the store on a real SQLite database, and the cache the scanner and ingress
read the rules through."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import pytest

from moat.db import create_engine
from moat.migrate import upgrade
from moat.model import Category, MessageEnvelope
from moat.sender_rules import (
    CachedRules,
    RuleAction,
    RuleSet,
    ScopeKind,
    SenderRule,
    SenderRuleStore,
    judge,
    normalise_sender,
)
from moat.settings import Settings
from services.scanner.checks import build_checks, parse
from services.scanner.checks.sender_lists import SenderListCheck


def rule(action: str, sender: str, kind: str = "global", scope: str = "") -> SenderRule:
    return SenderRule(
        id=f"{action}-{sender}-{kind}-{scope}",
        action=RuleAction(action),
        sender=sender,
        scope_kind=ScopeKind(kind),
        scope=scope,
        created_at=datetime(2026, 1, 1),
        created_by="test",
    )


BOB = "bob@example.test"
RULES = RuleSet(
    [
        rule("block", "spam.test"),  # global, a domain
        rule("allow", "friend@spam.test", "domain", "example.test"),
        rule("block", "friend@spam.test", "recipient", "carol@example.test"),
        rule("allow", "news.spam.test", "recipient", BOB),
        rule("block", "mail.partner.test", "domain", "example.test"),
        rule("allow", "partner.test", "domain", "example.test"),
        rule("block", "boss@corp.test", "recipient", BOB),
    ]
)


@pytest.mark.parametrize(
    ("sender", "recipient", "expected"),
    [
        # A global domain rule covers the domain and its subdomains...
        ("x@spam.test", BOB, ("block", "global")),
        ("x@deep.sub.spam.test", "dave@other.example.test", ("block", "global")),
        # ...but a domain's rule beats a global one, and a recipient's beats the domain's.
        ("friend@spam.test", BOB, ("allow", "domain")),
        ("friend@spam.test", "carol@example.test", ("block", "recipient")),
        ("friend@spam.test", "dave@other.example.test", ("block", "global")),
        # Within a scope, the longest domain wins (mail.partner.test before partner.test)...
        ("a@mail.partner.test", BOB, ("block", "domain")),
        ("a@www.partner.test", BOB, ("allow", "domain")),
        # ...and a recipient's subdomain rule beats the global rule on its parent.
        ("a@news.spam.test", BOB, ("allow", "recipient")),
        ("a@news.spam.test", "carol@example.test", ("block", "global")),
        # Addresses and domains compare without case.
        ("Boss@CORP.test", "BOB@example.TEST", ("block", "recipient")),
        # No rule: nothing; a domain rule is no rule for its parent or a lookalike.
        ("boss@corp.test", "carol@example.test", None),
        ("x@test", BOB, None),
        ("x@notspam.test", BOB, None),
        # The null sender names nobody: no rule, even a global one, matches it.
        ("", BOB, None),
        ("<>", BOB, None),
    ],
)
def test_the_most_specific_rule_wins(
    sender: str, recipient: str, expected: tuple[str, str] | None
) -> None:
    found = RULES.applicable(sender, recipient)
    assert (None if found is None else (found.action, found.scope_kind)) == expected


def test_a_message_is_held_if_any_recipient_blocks_and_spared_if_every_one_allows() -> None:
    mixed = judge(RULES, "friend@spam.test", [BOB, "carol@example.test"])
    assert [r.scope for r in mixed.blocked_by] == ["carol@example.test"]
    assert not mixed.all_allow
    allowed = judge(RULES, "friend@spam.test", [BOB, "erin@example.test"])
    assert not allowed.blocked_by and allowed.all_allow
    partly = judge(RULES, "friend@spam.test", [BOB, "dave@other.example.test"])
    assert partly.blocked_by and not partly.all_allow
    nobody = judge(RULES, "someone@else.test", [BOB])
    assert not nobody.blocked_by and not nobody.all_allow


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("Someone@Example.ORG", "someone@example.org"),
        ("<someone@example.org>", "someone@example.org"),
        ("Example.org.", "example.org"),
        ("mail.example-one.org", "mail.example-one.org"),
        ("example", None),
        ("-bad.org", None),
        ("a b@example.org", None),
        ("not a domain.org", None),
        ("", None),
    ],
)
def test_senders_are_kept_in_one_form(given: str, kept: str | None) -> None:
    assert normalise_sender(given) == kept


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'moat.db'}"
    upgrade(url)
    return url


def test_store_sets_one_rule_per_scope_and_sender(database_url: str) -> None:
    async def scenario() -> None:
        store = SenderRuleStore(create_engine(database_url))
        try:
            first, created = await store.put(
                RuleAction.BLOCK, "x@spam.test", ScopeKind.RECIPIENT, BOB, "me"
            )
            assert created
            again, created = await store.put(
                RuleAction.ALLOW, "x@spam.test", ScopeKind.RECIPIENT, BOB, "you"
            )
            assert not created and again.id == first.id
            assert (again.action, again.created_by) == (RuleAction.ALLOW, "you")
            other, created = await store.put(
                RuleAction.BLOCK, "x@spam.test", ScopeKind.DOMAIN, "example.test", "me"
            )
            assert created and other.id != first.id
            assert len(await store.all()) == 2
            assert await store.delete(first.id)
            assert not await store.delete(first.id)
            assert [r.id for r in await store.all()] == [other.id]
        finally:
            await store.engine.dispose()

    asyncio.run(scenario())


def test_the_cache_reads_at_most_every_poll_interval_and_keeps_rules_it_cannot_reread(
    database_url: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        store = SenderRuleStore(create_engine(database_url))
        cache = CachedRules(store, poll_interval=0.2)
        try:
            assert len(await cache.current()) == 0
            await store.put(RuleAction.BLOCK, "spam.test", ScopeKind.GLOBAL, "", "me")
            assert len(await cache.current()) == 0  # not yet: read within the interval
            await asyncio.sleep(0.25)
            rules = await cache.current()
            assert rules.applicable("a@spam.test", BOB) is not None
            # The database goes away: the rules in force stay.
            await store.engine.dispose()
            store.engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'no' / 'x.db'}")
            store.reader = store.engine
            await asyncio.sleep(0.25)
            assert (await cache.current()) is rules
        finally:
            await store.engine.dispose()

    asyncio.run(scenario())


def test_a_scanner_that_never_read_the_rules_does_not_judge(tmp_path: Path) -> None:
    """No rules read yet and none readable: the check fails (SENDER_LISTS_FAIL, retried),
    rather than pass a blocked sender's mail as if no rule existed."""
    (tmp_path / "empty.db").write_bytes(b"")  # a database without the table
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    check = SenderListCheck(settings)
    envelope = MessageEnvelope(mail_from="a@spam.test", rcpt_tos=(BOB,))
    message = parse("m", b"Subject: hi\r\n\r\nhello\r\n", envelope, settings.scanner)

    async def run() -> None:
        try:
            with pytest.raises(RuntimeError, match="could not be read"):
                await check.check(message)
        finally:
            await check.rules.close()

    asyncio.run(run())


def test_the_check_is_registered_and_finds_blocks_and_allows(database_url: str) -> None:
    settings = Settings(database_url=database_url)
    assert "sender_lists" in [c.name for c in build_checks(settings)]

    async def scenario() -> None:
        check = SenderListCheck(settings)
        store = SenderRuleStore(create_engine(database_url))
        try:
            await store.put(RuleAction.BLOCK, "spam.test", ScopeKind.DOMAIN, "example.test", "me")
            await store.put(RuleAction.ALLOW, "friend@pals.test", ScopeKind.RECIPIENT, BOB, "me")

            async def findings(sender: str, *rcpts: str) -> list[tuple[str, Category, float]]:
                envelope = MessageEnvelope(mail_from=sender, rcpt_tos=rcpts)
                message = parse("m", b"Subject: hi\r\n\r\nhello\r\n", envelope, settings.scanner)
                return [(f.symbol, f.category, f.score) for f in await check.check(message)]

            assert await findings("a@spam.test", BOB) == [("SENDER_BLOCKED", Category.POLICY, 10.0)]
            assert await findings("friend@pals.test", BOB) == [
                ("SENDER_ALLOWED", Category.INFO, 0.0)
            ]
            # Allowed by one recipient only: no allow.
            assert await findings("friend@pals.test", BOB, "carol@example.test") == []
            assert await findings("", BOB) == []
        finally:
            await check.rules.close()
            await store.engine.dispose()

    asyncio.run(scenario())
