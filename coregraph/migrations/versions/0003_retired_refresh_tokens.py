"""Remember every rotated refresh token, not just the previous one: any of them coming back
revokes the session.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "retired_refresh_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=30), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_retired_refresh_tokens_session_id_sessions"),
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_retired_refresh_tokens")),
    )
    with op.batch_alter_table("retired_refresh_tokens") as batch_op:
        batch_op.create_index(
            batch_op.f("ix_retired_refresh_tokens_session_id"), ["session_id"], unique=False
        )
    op.execute(
        "INSERT INTO retired_refresh_tokens (token_hash, session_id, retired_at) "
        "SELECT previous_token_hash, id, COALESCE(last_refreshed_at, created_at) FROM sessions "
        "WHERE previous_token_hash IS NOT NULL"
    )
    with op.batch_alter_table("sessions") as batch_op:
        batch_op.drop_index("ix_sessions_previous_token_hash")
        batch_op.drop_column("previous_token_hash")


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch_op:
        batch_op.add_column(sa.Column("previous_token_hash", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_sessions_previous_token_hash", ["previous_token_hash"])
    op.drop_table("retired_refresh_tokens")
