"""quarantine and REST API: the main headers of a message, API tokens, audit, sender rules,
release requests, webhooks and their events, feedback to learn, used one-click links

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 22:01:31.538325
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("scope", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("last_used_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("secret_hash"),
    )
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("message_id", sa.String(length=26), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_message_id"), ["message_id"], unique=False)

    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=26), nullable=False),
        sa.Column("label", sa.String(length=4), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("learned_at", sa.DateTime(), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_learned_at"), ["learned_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_feedback_message_id"), ["message_id"], unique=False)

    op.create_table(
        "sender_rules",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("action", sa.String(length=8), nullable=False),
        sa.Column("sender", sa.Text(), nullable=False),
        sa.Column("scope_kind", sa.String(length=16), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("scope_kind", "scope", "sender", name="uq_sender_rules_scope_sender"),
    )
    op.create_table(
        "used_links",
        sa.Column("nonce", sa.String(length=32), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("message_id", sa.String(length=26), nullable=False),
        sa.PrimaryKeyConstraint("nonce"),
    )
    op.create_table(
        "webhooks",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "release_requests",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("message_id", sa.String(length=26), nullable=False),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("decided_by", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("release_requests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_release_requests_message_id"), ["message_id"], unique=False
        )

    op.create_table(
        "webhook_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("webhook_id", sa.String(length=26), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["webhook_id"],
            ["webhooks.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_webhook_events_status_next", ["status", "next_attempt_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_webhook_events_webhook_id"), ["webhook_id"], unique=False
        )

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subject", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("header_from", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("header_message_id", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("released_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("released_by", sa.Text(), nullable=True))
        batch_op.create_index("ix_messages_received_at", ["received_at"], unique=False)
        batch_op.create_index("ix_messages_status_updated", ["status", "updated_at"], unique=False)

    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("notified_at", sa.DateTime(), nullable=True))
        batch_op.create_index("ix_recipients_address", ["address"], unique=False)
        batch_op.create_index("ix_recipients_domain", ["domain"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.drop_index("ix_recipients_domain")
        batch_op.drop_index("ix_recipients_address")
        batch_op.drop_column("notified_at")

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_status_updated")
        batch_op.drop_index("ix_messages_received_at")
        batch_op.drop_column("released_by")
        batch_op.drop_column("released_at")
        batch_op.drop_column("header_message_id")
        batch_op.drop_column("header_from")
        batch_op.drop_column("subject")

    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_events_webhook_id"))
        batch_op.drop_index("ix_webhook_events_status_next")

    op.drop_table("webhook_events")
    with op.batch_alter_table("release_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_release_requests_message_id"))

    op.drop_table("release_requests")
    op.drop_table("webhooks")
    op.drop_table("used_links")
    op.drop_table("sender_rules")
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feedback_message_id"))
        batch_op.drop_index(batch_op.f("ix_feedback_learned_at"))

    op.drop_table("feedback")
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_message_id"))
        batch_op.drop_index(batch_op.f("ix_audit_at"))

    op.drop_table("audit")
    op.drop_table("api_tokens")
