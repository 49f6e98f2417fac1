"""Evaluation losses recorded separately: label, rationale and DSS-weighted, per epoch and at
the best epoch, and which of them (`selection_loss`) picked the best epoch.

Revision ID: 0002
Revises: 0001

Plain nullable column additions: ALTER TABLE ADD COLUMN on SQLite and PostgreSQL alike (no
table rebuild). Rows written before this revision keep NULL: their eval_loss was the
DSS-weighted loss, which nothing records separately.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRIAL_COLUMNS = ("eval_label_loss", "eval_rationale_loss")
EPOCH_COLUMNS = ("eval_label_loss", "eval_rationale_loss", "eval_dss_loss")


def upgrade() -> None:
    op.add_column("trials", sa.Column("selection_loss", sa.String(length=16), nullable=True))
    for name in TRIAL_COLUMNS:
        op.add_column("trials", sa.Column(name, sa.Double(), nullable=True))
    for name in EPOCH_COLUMNS:
        op.add_column("epochs", sa.Column(name, sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("epochs") as batch:
        for name in EPOCH_COLUMNS:
            batch.drop_column(name)
    with op.batch_alter_table("trials") as batch:
        for name in (*TRIAL_COLUMNS, "selection_loss"):
            batch.drop_column(name)
