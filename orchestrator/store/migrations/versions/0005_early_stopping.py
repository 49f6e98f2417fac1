"""Where and why each trial stopped training (training.earlyStopping).

Revision ID: 0005
Revises: 0004

Plain nullable column additions, as 0002: rows written before keep NULL (they ran every
configured epoch, or failed).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("trials", sa.Column("stopped_epoch", sa.Integer(), nullable=True))
    op.add_column("trials", sa.Column("stop_reason", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("stop_reason")
        batch.drop_column("stopped_epoch")
