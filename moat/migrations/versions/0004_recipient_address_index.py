"""the API's message listing: an index on recipients' addresses without case

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_recipients_address_lower",
        "recipients",
        [sa.text("lower(address)")],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_recipients_address_lower", table_name="recipients")
