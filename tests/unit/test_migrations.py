"""The migrations build exactly the schema ``moat/db.py`` declares, and go down again."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from moat.db import create_engine, metadata
from moat.migrate import alembic_config, upgrade


def _differences(url: str) -> list[object]:
    async def compare() -> list[object]:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:

                def diff(sync: Connection) -> list[object]:
                    return list(compare_metadata(MigrationContext.configure(sync), metadata))

                return await conn.run_sync(diff)
        finally:
            await engine.dispose()

    return asyncio.run(compare())


@pytest.mark.filterwarnings("ignore:.*expression-based index")
def test_head_matches_the_declared_schema(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'moat.db'}"
    upgrade(url)
    assert _differences(url) == []


@pytest.mark.filterwarnings("ignore:.*expression-based index")
def test_down_to_the_start_and_up_again(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'moat.db'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    upgrade(url)
    assert _differences(url) == []


@pytest.mark.filterwarnings("ignore:.*expression-based index")
def test_recipient_search_by_address_uses_the_index(tmp_path: Path) -> None:
    # Autogenerate cannot compare expression indexes on SQLite (it skips them): check that the
    # migration built it, and that the listing's lookup by address uses it.
    url = f"sqlite+aiosqlite:///{tmp_path / 'moat.db'}"
    upgrade(url)
    with sqlite3.connect(tmp_path / "moat.db") as conn:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT message_id FROM recipients WHERE lower(address) = ?",
            ("bob@example.test",),
        ).fetchall()
    assert "USING INDEX ix_recipients_address_lower" in str(plan)
