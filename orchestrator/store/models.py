"""The store's tables as SQLAlchemy 2 typed models: sweeps, trial attempts and their epochs.

`migrations/versions/` creates exactly these tables; a test compares the two with Alembic's
autogenerate, so a column added here without a migration fails the suite.

Portability rules (SQLite on workstations, PostgreSQL on clusters):
- Enum-valued columns are plain strings (`StrEnumType`), guarded by CHECK constraints, not
  native enum types: adding a state is an ordinary migration on both databases.
- Timestamps are stored in UTC and always come back timezone-aware (`UTCDateTime`), because
  SQLite keeps no offset and would otherwise hand back naive datetimes.
- JSON is JSONB on PostgreSQL (comparable, indexable) and JSON text on SQLite.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from orchestrator.core.lifecycle import Method, OOMKind, TrialState
from orchestrator.core.spec import SelectionLoss
from orchestrator.core.stopping import StopReason

# Explicit constraint names, so migrations can address constraints by name on every database
# (SQLite's batch mode needs them to rebuild a table) and autogenerate never sees a rename.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s__%(column_0_N_name)s",
    "uq": "uq_%(table_name)s__%(column_0_N_name)s",
    "ck": "ck_%(table_name)s__%(constraint_name)s",
    "fk": "fk_%(table_name)s__%(column_0_N_name)s__%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ERROR_EXCERPT_CHARS = 4000
STATE_LENGTH = 16


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """An aware UTC datetime; naive values are taken to be UTC already (workers write UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp stored in UTC and read back timezone-aware on every database."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        value = as_utc(value)
        if value is not None and dialect.name == "sqlite":
            # SQLite's DATETIME text has no offset; storing UTC naive keeps values comparable.
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return as_utc(value)


class StrEnumType(sa.TypeDecorator[StrEnum]):
    """A StrEnum stored as its plain string value (no native enum type), read back as the enum."""

    impl = sa.String(STATE_LENGTH)
    cache_ok = True

    def __init__(self, enum: type[StrEnum], length: int = STATE_LENGTH) -> None:
        super().__init__(length)
        self.enum = enum

    def process_bind_param(self, value: StrEnum | str | None, dialect: Dialect) -> str | None:
        # Validate on the way in, so a typo fails here and not as a CHECK violation later.
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> StrEnum | None:
        return None if value is None else self.enum(value)

    def __repr__(self) -> str:
        # Alembic renders column types with repr(); keep it importable-looking and stable.
        return f"StrEnumType({self.enum.__name__})"


def _values_check(column: str, enum: type[StrEnum]) -> str:
    values = ", ".join(f"'{member.value}'" for member in enum)
    return f"{column} IN ({values})"


# JSONB on PostgreSQL: unlike `json` it has an equality operator (used by upserts to skip
# no-op updates) and can be indexed.
JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


class SweepRow(Base):
    """One sweep, keyed by (namespace, name); `spec` is the SweepSpec as camelCase JSON."""

    __tablename__ = "sweeps"
    __table_args__ = (sa.UniqueConstraint("namespace", "name"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    # "" rather than NULL for "no namespace" (workstation runs): NULLs never collide in a
    # unique constraint, so (NULL, "x") could be inserted twice.
    namespace: Mapped[str] = mapped_column(sa.String(253), default="", server_default=sa.text("''"))
    name: Mapped[str] = mapped_column(sa.String(253))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    trials: Mapped[list[AttemptRow]] = relationship(
        back_populates="sweep", cascade="all, delete-orphan", passive_deletes=True
    )

    def __repr__(self) -> str:
        return f"SweepRow(id={self.id!r}, namespace={self.namespace!r}, name={self.name!r})"


class AttemptRow(Base):
    """One attempt of one trial: identity, outcome and measurements (an AttemptResult's fields)."""

    __tablename__ = "trials"
    __table_args__ = (
        sa.UniqueConstraint("sweep_id", "trial_id", "attempt"),
        sa.Index(None, "sweep_id", "status"),
        sa.CheckConstraint("attempt >= 1", name="attempt_positive"),
        sa.CheckConstraint(_values_check("status", TrialState), name="status"),
        sa.CheckConstraint(_values_check("method", Method), name="method"),
        sa.CheckConstraint(
            "oom_kind IS NULL OR " + _values_check("oom_kind", OOMKind), name="oom_kind"
        ),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(sa.ForeignKey("sweeps.id", ondelete="CASCADE"))
    trial_id: Mapped[str] = mapped_column(sa.String(16))
    attempt: Mapped[int] = mapped_column(sa.Integer)
    lane: Mapped[str] = mapped_column(sa.String(255))
    model: Mapped[str] = mapped_column(sa.String(256))
    model_index: Mapped[int] = mapped_column(sa.Integer)
    method: Mapped[Method] = mapped_column(StrEnumType(Method))
    rank: Mapped[int | None] = mapped_column(sa.Integer)
    alpha: Mapped[int | None] = mapped_column(sa.Integer)
    dss_alpha: Mapped[float] = mapped_column(sa.Double)
    seed: Mapped[int] = mapped_column(sa.BigInteger)
    status: Mapped[TrialState] = mapped_column(StrEnumType(TrialState))
    oom_kind: Mapped[OOMKind | None] = mapped_column(StrEnumType(OOMKind))
    error: Mapped[str | None] = mapped_column(sa.Text)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    wall_seconds: Mapped[float | None] = mapped_column(sa.Double)
    time_to_first_step_seconds: Mapped[float | None] = mapped_column(sa.Double)
    samples_per_second: Mapped[float | None] = mapped_column(sa.Double)
    peak_gpu_memory_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    total_gpu_memory_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    gpu_memory_per_device: Mapped[list[int]] = mapped_column(JSONType, default=list)
    peak_torch_allocated_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    peak_torch_reserved_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    peak_host_memory_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    estimated_memory_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    best_eval_loss: Mapped[float | None] = mapped_column(sa.Double)
    best_epoch: Mapped[int | None] = mapped_column(sa.Integer)
    selection_loss: Mapped[SelectionLoss | None] = mapped_column(StrEnumType(SelectionLoss))
    eval_label_loss: Mapped[float | None] = mapped_column(sa.Double)
    eval_rationale_loss: Mapped[float | None] = mapped_column(sa.Double)
    exact_match: Mapped[float | None] = mapped_column(sa.Double)
    json_valid_rate: Mapped[float | None] = mapped_column(sa.Double)
    bleu: Mapped[float | None] = mapped_column(sa.Double)
    chrf: Mapped[float | None] = mapped_column(sa.Double)
    ter: Mapped[float | None] = mapped_column(sa.Double)
    dsl_similarity: Mapped[float | None] = mapped_column(sa.Double)
    end_to_end_samples_per_second: Mapped[float | None] = mapped_column(sa.Double)
    epochs_completed: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    stopped_epoch: Mapped[int | None] = mapped_column(sa.Integer)
    stop_reason: Mapped[StopReason | None] = mapped_column(StrEnumType(StopReason))
    trainable_parameters: Mapped[int | None] = mapped_column(sa.BigInteger)
    total_parameters: Mapped[int | None] = mapped_column(sa.BigInteger)
    baseline_eval_loss: Mapped[float | None] = mapped_column(sa.Double)
    baseline_exact_match: Mapped[float | None] = mapped_column(sa.Double)
    baseline_json_valid_rate: Mapped[float | None] = mapped_column(sa.Double)
    rayjob_name: Mapped[str | None] = mapped_column(sa.String(253))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    # Joined: every reader of a trial row wants its sweep's name (one row, one join).
    sweep: Mapped[SweepRow] = relationship(back_populates="trials", lazy="joined", innerjoin=True)
    epochs: Mapped[list[EpochRow]] = relationship(
        back_populates="trial",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="EpochRow.epoch",
    )

    @property
    def is_terminal(self) -> bool:
        return TrialState(self.status).is_terminal

    def __repr__(self) -> str:
        return (
            f"AttemptRow(id={self.id!r}, trial_id={self.trial_id!r}, attempt={self.attempt!r}, "
            f"status={self.status!r})"
        )


class EpochRow(Base):
    """One epoch of one trial attempt (an EpochRecord), written live and with the result;
    epoch 0 is the untuned model's evaluation (training.baseline)."""

    __tablename__ = "epochs"
    __table_args__ = (sa.UniqueConstraint("trial_pk", "epoch"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    trial_pk: Mapped[int] = mapped_column(sa.ForeignKey("trials.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(sa.Integer)
    # Losses are nullable although EpochRecord requires them: SQLite stores NaN (a diverged
    # run) as NULL, and a NOT NULL column would then refuse the whole result.
    train_loss: Mapped[float | None] = mapped_column(sa.Double)
    train_label_loss: Mapped[float | None] = mapped_column(sa.Double)
    train_rationale_loss: Mapped[float | None] = mapped_column(sa.Double)
    eval_loss: Mapped[float | None] = mapped_column(sa.Double)
    eval_label_loss: Mapped[float | None] = mapped_column(sa.Double)
    eval_rationale_loss: Mapped[float | None] = mapped_column(sa.Double)
    eval_dss_loss: Mapped[float | None] = mapped_column(sa.Double)
    learning_rate: Mapped[float | None] = mapped_column(sa.Double)
    samples_per_second: Mapped[float | None] = mapped_column(sa.Double)
    wall_seconds: Mapped[float | None] = mapped_column(sa.Double)
    peak_gpu_memory_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    peak_host_memory_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    exact_match: Mapped[float | None] = mapped_column(sa.Double)
    json_valid_rate: Mapped[float | None] = mapped_column(sa.Double)

    trial: Mapped[AttemptRow] = relationship(back_populates="epochs")

    def __repr__(self) -> str:
        return f"EpochRow(trial_pk={self.trial_pk!r}, epoch={self.epoch!r})"
