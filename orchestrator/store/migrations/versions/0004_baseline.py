"""The baseline: each trial's untuned model evaluated before training (training.baseline).

Revision ID: 0004
Revises: 0003

Stored as epoch 0 in `epochs` (its train loss and throughput NULL: nothing trained), whose new
`exact_match` and `json_valid_rate` hold the generation metrics of that epoch; `trials` keeps
the baseline's selection loss and generation metrics beside the best epoch's, so results and
dashboards show the gain without reading epochs. Plain nullable column additions (no table
rebuild on SQLite); rows written before this revision have no baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRIAL_COLUMNS = ("baseline_eval_loss", "baseline_exact_match", "baseline_json_valid_rate")
EPOCH_COLUMNS = ("exact_match", "json_valid_rate")


def upgrade() -> None:
    for name in TRIAL_COLUMNS:
        op.add_column("trials", sa.Column(name, sa.Double(), nullable=True))
    for name in EPOCH_COLUMNS:
        op.add_column("epochs", sa.Column(name, sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("epochs") as batch:
        for name in EPOCH_COLUMNS:
            batch.drop_column(name)
    with op.batch_alter_table("trials") as batch:
        for name in TRIAL_COLUMNS:
            batch.drop_column(name)
