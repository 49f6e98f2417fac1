"""Generation metrics the paper's limitations section asks for (BLEU, chrF, TER and the
structural similarity of the generated Query DSL) and end-to-end samples/s, per trial.

Revision ID: 0003
Revises: 0002

Plain nullable column additions: ALTER TABLE ADD COLUMN on SQLite and PostgreSQL alike (no
table rebuild). Rows written before this revision keep NULL: nothing computed them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRIAL_COLUMNS = ("bleu", "chrf", "ter", "dsl_similarity", "end_to_end_samples_per_second")


def upgrade() -> None:
    for name in TRIAL_COLUMNS:
        op.add_column("trials", sa.Column(name, sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        for name in TRIAL_COLUMNS:
            batch.drop_column(name)
