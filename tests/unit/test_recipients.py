"""Recipient verification at RCPT (services/ingress/recipients.py): the list with its patterns,
the answer cache, and call-outs to a real SMTP server on loopback that knows some users."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from pydantic import ValidationError

from moat import replies
from moat.settings import Settings
from services.ingress.recipients import Answer, AnswerCache, RecipientList, RecipientVerifier
from tests.harness import free_port
from tests.support.mailbox_server import MailboxServer, SilentServer


def synchronous(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test on a loop of its own (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


UNKNOWN = "550 5.1.1 <{}>: Recipient address rejected: User unknown"


def settings(**domains: dict[str, Any]) -> Settings:
    return Settings(
        domains={name.replace("_", "."): value for name, value in domains.items()},
        smtp={"hostname": "moat.test"},
        callout={"timeout": 2},
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the list ----------------------------------------------------------------------------------


def test_list_matches_exact_addresses_and_globs_without_case() -> None:
    table = RecipientList(
        ["alice@example.test", "Bob@Example.TEST", "*-list@example.test", "t?m@example.test"]
    )
    for address in (
        "alice@example.test",
        "ALICE@example.test",
        "bob@example.test",
        "sales-list@example.test",
        "SALES-LIST@EXAMPLE.TEST",
        "-list@example.test",  # "*" matches nothing too, as in a shell
        "tom@example.test",
        "tim@example.test",
        "alice@example.test.",  # the trailing dot ingress ignores when it routes
        '"alice"@example.test',  # quotes that change nothing (RFC 5321 4.1.2)
    ):
        assert address in table, address
    for address in (
        "mallory@example.test",
        "alice@example.test.evil.test",
        "xalice@example.test",
        "sales-list-x@example.test",
        "sales-list@other.test",
        "toom@example.test",
        "tm@example.test",
        '"alice "@example.test',
        '"al@ice"@example.test',
    ):
        assert address not in table, address


def test_list_pattern_characters_are_literal_except_star_and_question_mark() -> None:
    table = RecipientList(["a.b+c@example.test", "x(y)*@example.test"])
    assert "a.b+c@example.test" in table
    assert "aXb+c@example.test" not in table  # "." is a dot, not "any character"
    assert "a.bbc@example.test" not in table  # "+" is a plus, not "one or more"
    assert "x(y)z@example.test" in table
    assert "xyz@example.test" not in table


def test_settings_refuse_both_ways_and_entries_of_another_domain() -> None:
    with pytest.raises(ValidationError, match="not both"):
        settings(example_test={"relay": "127.0.0.1:25", "recipients": [], "verify": "callout"})
    with pytest.raises(ValidationError, match="is not in example.test"):
        settings(example_test={"relay": "127.0.0.1:25", "recipients": ["a@other.test"]})
    with pytest.raises(ValidationError):
        settings(example_test={"relay": "127.0.0.1:25", "verify": "ldap"})
    defaults = Settings().callout
    # Postfix's address_verify: a positive answer is kept far longer than a negative one.
    assert defaults.positive_ttl == 7 * 86400
    assert defaults.negative_ttl == 3 * 3600
    assert defaults.sender == ""


@synchronous
async def test_verifier_by_list() -> None:
    verifier = RecipientVerifier(
        settings(
            example_test={"relay": "127.0.0.1:25", "recipients": ["alice@example.test"]},
            open_test={"relay": "127.0.0.1:25"},
        )
    )
    assert await verifier.refusal("Alice@example.test", "example.test") is None
    assert await verifier.refusal("Alice@example.test", "EXAMPLE.test.") is None
    assert await verifier.refusal("eve@example.test", "example.test") == UNKNOWN.format(
        "eve@example.test"
    )
    # RFC 5321 4.5.1: postmaster must be accepted, listed or not.
    assert await verifier.refusal("PostMaster@example.test", "example.test") is None
    # A domain without recipients or verify: as before, everybody.
    assert await verifier.refusal("anyone@open.test", "open.test") is None
    # An empty list is a list: nobody but the postmaster.
    empty = RecipientVerifier(settings(example_test={"relay": "127.0.0.1:25", "recipients": []}))
    assert await empty.refusal("alice@example.test", "example.test") is not None
    assert await empty.refusal("postmaster@example.test", "example.test") is None


# --- the cache ---------------------------------------------------------------------------------


def test_cache_keeps_positive_longer_than_negative_and_no_failures() -> None:
    clock = Clock()
    cache = AnswerCache(Settings(callout={"positive_ttl": 100, "negative_ttl": 10}).callout, clock)
    cache.put("yes@example.test", Answer.EXISTS)
    cache.put("no@example.test", Answer.UNKNOWN)
    cache.put("busy@example.test", Answer.DEFERRED)
    cache.put("down@example.test", Answer.UNREACHABLE)
    assert cache.get("yes@example.test") is Answer.EXISTS
    assert cache.get("no@example.test") is Answer.UNKNOWN
    assert cache.get("busy@example.test") is None
    assert cache.get("down@example.test") is None
    clock.now += 10
    assert cache.get("no@example.test") is None
    assert cache.get("yes@example.test") is Answer.EXISTS
    clock.now += 90
    assert cache.get("yes@example.test") is None
    assert len(cache) == 0


def test_cache_is_bounded_oldest_first() -> None:
    cache = AnswerCache(Settings(callout={"max_entries": 3}).callout, Clock())
    for n in range(5):
        cache.put(f"u{n}@example.test", Answer.UNKNOWN)
    assert len(cache) == 3
    assert cache.get("u0@example.test") is None
    assert cache.get("u1@example.test") is None
    assert cache.get("u4@example.test") is Answer.UNKNOWN


def test_negative_ttl_zero_caches_no_unknown() -> None:
    cache = AnswerCache(Settings(callout={"negative_ttl": 0}).callout, Clock())
    cache.put("no@example.test", Answer.UNKNOWN)
    assert cache.get("no@example.test") is None


# --- call-outs to a real server on loopback ----------------------------------------------------


def callout_verifier(relay: str, clock: Clock | None = None, **callout: Any) -> RecipientVerifier:
    config = Settings(
        domains={"example.test": {"relay": relay, "verify": "callout"}},
        smtp={"hostname": "moat.test"},
        callout={"timeout": 2, **callout},
    )
    return RecipientVerifier(config, clock or time.monotonic)


@synchronous
async def test_callout_asks_the_domains_server_and_caches_both_answers() -> None:
    clock = Clock()
    with MailboxServer({"alice@example.test"}) as server:
        verifier = callout_verifier(server.address, clock, negative_ttl=60)
        assert await verifier.refusal("alice@example.test", "example.test") is None
        refused = await verifier.refusal("eve@example.test", "example.test")
        # The client learns nothing of the server behind us: neither its name nor its text.
        assert refused == UNKNOWN.format("eve@example.test")
        assert server.probes() == 2
        # The null sender, as a bounce would come (RFC 5321 4.5.5): no reply can come back.
        assert server.handler.mail_froms == ["<>", "<>"]
        for _ in range(3):  # cached: asked no more, in any case of the address
            assert await verifier.refusal("ALICE@example.test", "example.test") is None
            assert await verifier.refusal("Eve@example.test", "example.test") == UNKNOWN.format(
                "Eve@example.test"
            )
        assert server.probes() == 2
        assert verifier.probes == 2
        clock.now += 61  # the negative answer ran out, the positive one did not
        await verifier.refusal("eve@example.test", "example.test")
        await verifier.refusal("alice@example.test", "example.test")
        assert server.probes_for("eve@example.test") == 2
        assert server.probes_for("alice@example.test") == 1


@synchronous
async def test_concurrent_rcpts_for_one_address_share_one_probe() -> None:
    with MailboxServer({"alice@example.test"}, delay=0.3) as server:
        verifier = callout_verifier(server.address)
        answers = await asyncio.gather(
            *(verifier.refusal("alice@example.test", "example.test") for _ in range(20)),
            *(verifier.refusal("eve@example.test", "example.test") for _ in range(20)),
        )
        assert answers[:20] == [None] * 20
        assert answers[20:] == [UNKNOWN.format("eve@example.test")] * 20
        assert server.probes_for("alice@example.test") == 1
        assert server.probes_for("eve@example.test") == 1


@synchronous
async def test_a_client_that_hangs_up_does_not_cancel_the_shared_probe() -> None:
    with MailboxServer({"alice@example.test"}, delay=0.3) as server:
        verifier = callout_verifier(server.address)
        first = asyncio.create_task(verifier.refusal("alice@example.test", "example.test"))
        second = asyncio.create_task(verifier.refusal("alice@example.test", "example.test"))
        await asyncio.sleep(0.1)
        first.cancel()
        assert await second is None
        assert server.probes() == 1


@synchronous
async def test_a_4xx_to_rcpt_is_450_and_not_cached() -> None:
    with MailboxServer({"alice@example.test"}, busy={"busy@example.test"}) as server:
        verifier = callout_verifier(server.address)
        for _ in range(2):
            refused = await verifier.refusal("busy@example.test", "example.test")
            assert refused == replies.UNVERIFIED_DEFERRED.format(address="busy@example.test")
            assert refused.startswith("450 4.1.1 <busy@example.test>: ")
        assert server.probes_for("busy@example.test") == 2


@synchronous
async def test_server_down_is_451_and_the_first_rcpt_after_it_is_back_is_answered() -> None:
    port = free_port()
    verifier = callout_verifier(f"127.0.0.1:{port}")
    refused = await verifier.refusal("alice@example.test", "example.test")
    assert refused == replies.UNVERIFIED_UNREACHABLE.format(address="alice@example.test")
    assert refused.startswith("451 4.4.3 ")
    server = MailboxServer({"alice@example.test"})
    server.port = port
    server.controller.port = port
    with server:
        assert await verifier.refusal("alice@example.test", "example.test") is None
        assert await verifier.refusal("eve@example.test", "example.test") is not None


@synchronous
async def test_a_silent_server_is_451_within_the_timeout() -> None:
    with SilentServer() as server:
        verifier = callout_verifier(server.address, timeout=0.5)
        started = time.monotonic()
        refused = await verifier.refusal("alice@example.test", "example.test")
        elapsed = time.monotonic() - started
    assert refused is not None and refused.startswith("451 4.4.3 ")
    assert elapsed < 1.5


@synchronous
async def test_a_server_refusing_the_probe_sender_is_451_not_550() -> None:
    with MailboxServer({"alice@example.test"}) as server:
        server.handler.refuse_sender = True
        verifier = callout_verifier(server.address)
        refused = await verifier.refusal("alice@example.test", "example.test")
        assert refused is not None and refused.startswith("451 4.4.3 ")
        assert server.probes() == 0  # it never got to RCPT


@synchronous
async def test_the_probe_sender_is_configurable() -> None:
    with MailboxServer({"alice@example.test"}) as server:
        verifier = callout_verifier(server.address, sender="verify@moat.test")
        assert await verifier.refusal("alice@example.test", "example.test") is None
        assert server.handler.mail_froms == ["verify@moat.test"]


@synchronous
async def test_postmaster_is_never_probed() -> None:
    with MailboxServer(set()) as server:
        verifier = callout_verifier(server.address)
        assert await verifier.refusal("postmaster@example.test", "example.test") is None
        assert server.probes() == 0


@synchronous
async def test_probes_in_flight_are_bounded() -> None:
    with MailboxServer({f"u{n}@example.test" for n in range(6)}, delay=0.4) as server:
        verifier = callout_verifier(server.address, max_concurrent=2, timeout=0.6)
        answers = await asyncio.gather(
            *(verifier.refusal(f"u{n}@example.test", "example.test") for n in range(6))
        )
        # Two at a time, 0.4 s each, 0.6 s at most: the first two pass, the rest waited out
        # their time for a slot and are told to come back (never refused as unknown).
        assert answers.count(None) == 2
        assert all(a is None or a.startswith("451 4.4.3 ") for a in answers)
