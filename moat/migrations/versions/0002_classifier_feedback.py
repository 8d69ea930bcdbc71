"""the spam classifier's learned feedback: state, deltas, learned messages

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "classifier_state",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "classifier_deltas",
        sa.Column("feature", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("delta", sa.Float(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("feature"),
    )
    with op.batch_alter_table("classifier_deltas", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_classifier_deltas_generation"), ["generation"], unique=False
        )
    op.create_table(
        "classifier_learned",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=4), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("learned_at", sa.DateTime(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("message_id", sa.String(length=26), nullable=True),
        sa.PrimaryKeyConstraint("digest"),
    )


def downgrade() -> None:
    op.drop_table("classifier_learned")
    with op.batch_alter_table("classifier_deltas", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_classifier_deltas_generation"))
    op.drop_table("classifier_deltas")
    op.drop_table("classifier_state")
