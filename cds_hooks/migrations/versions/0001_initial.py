"""Initial schema: issued_card and card_feedback.

Revision ID: 0001
Revises:
Create Date: 2024-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "issued_card",
        sa.Column("card_uuid", sa.String(255), primary_key=True),
        sa.Column("service_id", sa.String(255), nullable=False),
        sa.Column("hook_instance", sa.String(255), nullable=False),
        sa.Column("rule_id", sa.String(255), nullable=False),
        sa.Column("rule_version", sa.String(64), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "card_feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("card_uuid", sa.String(255), nullable=False),
        sa.Column("service_id", sa.String(255), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("accepted_suggestions", sa.JSON, nullable=False),
        sa.Column("override_reason", sa.JSON, nullable=True),
        sa.Column("outcome_timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rule_id", sa.String(255), nullable=True),
        sa.Column("rule_version", sa.String(64), nullable=True),
        sa.CheckConstraint("outcome IN ('accepted', 'overridden')", name="outcome_valid"),
    )
    op.create_index("ix_card_feedback_card_uuid", "card_feedback", ["card_uuid"])


def downgrade() -> None:
    op.drop_index("ix_card_feedback_card_uuid", table_name="card_feedback")
    op.drop_table("card_feedback")
    op.drop_table("issued_card")
