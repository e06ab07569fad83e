"""inbound notifications: what Microsoft sent, kept before the 202

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 01:00:00.000000
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
        "inbound_notifications",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("subscription_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("resource", sa.Text(), nullable=True),
        sa.Column("lifecycle_event", sa.String(length=64), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["notification_subscriptions.id"],
            name="fk_inbound_notifications_subscription_id",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_notifications")),
    )
    op.create_index(
        op.f("ix_inbound_notifications_processed_at"),
        "inbound_notifications",
        ["processed_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_inbound_notifications_subscription_id"),
        "inbound_notifications",
        ["subscription_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_table("inbound_notifications")
