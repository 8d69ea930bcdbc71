"""Repository.search_messages on a real SQLite database: what it finds, page by page, and the
plans SQLite runs it with (an index where the docstring says one serves)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import event

from moat.db import create_engine
from moat.migrate import upgrade
from moat.mime import MainHeaders
from moat.model import Action, Verdict, VerdictName
from moat.model import MessageStatus as M
from moat.repository import MessageSearch, NewMessage, RecipientMatch, Repository


def _spam() -> Verdict:
    return Verdict(verdict=VerdictName.SPAM, action=Action.QUARANTINE, score=9, findings=[])


def _clean() -> Verdict:
    return Verdict(verdict=VerdictName.CLEAN, action=Action.DELIVER, score=0, findings=[])


MAIL = [  # id, envelope sender, recipients, subject, From header, spam
    ("01SEARCH000000000000000001", "a@x.test", ["Bob@Example.test"], "Hello 50% off", "A <a@x>", 1),
    ("01SEARCH000000000000000002", "", ["carol@example.test"], "Report", "Mailer <m@y>", 0),
    ("01SEARCH000000000000000003", "b@y.test", ["dave@other.test"], "hello again", None, 1),
    ("01SEARCH000000000000000004", "c@z.test", ["bob@example.test", "dave@other.test"], "x", "", 0),
]


def test_search_criteria_and_pages(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'moat.db'}"
    upgrade(url)
    repository = Repository(create_engine(url))
    statements: list[tuple[str, Any]] = []

    @event.listens_for(repository.engine.sync_engine, "before_cursor_execute")
    def _capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().startswith("SELECT messages."):
            statements.append((statement, parameters))

    async def find(**criteria: Any) -> list[str]:
        before = criteria.pop("before_id", None)
        limit = criteria.pop("limit", 10)
        found = await repository.search_messages(
            MessageSearch(**criteria), before_id=before, limit=limit
        )
        return [record.id[-1] for record in found]

    async def scenario() -> None:
        try:
            for message_id, sender, to, subject, header_from, spam in MAIL:
                await repository.record_received(NewMessage(message_id, sender, to, 10))
                headers = MainHeaders(subject=subject, from_=header_from, message_id="<1@x>")
                verdict, status = (_spam(), M.QUARANTINED) if spam else (_clean(), M.DELIVERING)
                assert await repository.record_verdict(message_id, verdict, status, headers)

            assert await find() == ["4", "3", "2", "1"]  # newest first
            assert await find(limit=2) == ["4", "3"]
            assert await find(limit=2, before_id="01SEARCH000000000000000003") == ["2", "1"]
            assert await find(subject="HELLO") == ["3", "1"]
            assert await find(subject="50%") == ["1"]  # a literal %, not a wildcard
            assert await find(subject="_") == []
            assert await find(sender="MAILER") == ["2"]  # the From header
            assert await find(sender="y.test") == ["3"]  # the envelope sender
            bob = RecipientMatch(address="BOB@example.TEST")
            assert await find(recipients=(bob,)) == ["4", "1"]  # stored as written
            other = RecipientMatch(domain="other.test")
            assert await find(recipients=(bob, other)) == ["4"]  # both must hold
            assert await find(statuses=frozenset({M.QUARANTINED})) == ["3", "1"]
            assert await find(verdicts=frozenset({"clean"})) == ["4", "2"]

            # The plans: by primary key when nothing narrows, by index for a recipient.
            statements.clear()
            await find(limit=2)
            await find(recipients=(bob,))
            async with repository.engine.connect() as conn:
                plans = []
                for statement, parameters in statements:
                    rows = await conn.exec_driver_sql(
                        "EXPLAIN QUERY PLAN " + statement, tuple(parameters)
                    )
                    plans.append(" | ".join(str(row[-1]) for row in rows))
            assert "messages USING INDEX sqlite_autoindex_messages_1" in plans[0]
            assert "TEMP B-TREE" not in plans[0]  # no sort: the key is in order
            assert "USING INDEX ix_recipients_address_lower" in plans[1]
        finally:
            await repository.close()

    asyncio.run(scenario())
