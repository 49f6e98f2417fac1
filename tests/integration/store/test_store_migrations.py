"""Migrations: one history, applied to empty databases, matching the models, concurrently safe."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from orchestrator.store import (
    Base,
    alembic_config,
    create_store_engine,
    current_revision,
    head_revisions,
    migrate,
)
from tests.integration.store.store_helpers import migrate_after

pytestmark = pytest.mark.integration

TABLES = {"sweeps", "trials", "epochs"}


class TestHistory:
    def test_single_head(self) -> None:
        heads = ScriptDirectory.from_config(alembic_config()).get_heads()
        assert len(heads) == 1, f"migration history has {len(heads)} heads: {heads}; merge them"
        assert head_revisions() == tuple(heads)

    def test_every_revision_reaches_base(self) -> None:
        script = ScriptDirectory.from_config(alembic_config())
        revisions = list(script.walk_revisions())
        assert revisions, "no migrations found"
        assert revisions[-1].down_revision is None


class TestUpgrade:
    def test_applies_on_empty_database(self, store_url: str) -> None:
        engine = create_store_engine(store_url)
        try:
            assert current_revision(engine) is None
            migrate(engine)
            assert current_revision(engine) == head_revisions()[0]
            assert set(sa.inspect(engine).get_table_names()) >= TABLES
        finally:
            engine.dispose()

    def test_is_idempotent(self, store_url: str) -> None:
        migrate(store_url)
        migrate(store_url)
        engine = create_store_engine(store_url)
        try:
            assert current_revision(engine) == head_revisions()[0]
        finally:
            engine.dispose()

    def test_downgrade_to_base_and_back(self, store_url: str) -> None:
        engine = create_store_engine(store_url)
        try:
            migrate(engine)
            with engine.begin() as connection:
                command.downgrade(alembic_config(connection), "base")
            assert not TABLES & set(sa.inspect(engine).get_table_names())
            migrate(engine)
            assert set(sa.inspect(engine).get_table_names()) >= TABLES
        finally:
            engine.dispose()


class TestModelsMatchMigrations:
    def test_autogenerate_finds_no_difference(self, store_url: str) -> None:
        engine = create_store_engine(store_url)
        try:
            migrate(engine)
            with engine.connect() as connection:
                context = MigrationContext.configure(
                    connection, opts={"compare_type": True, "compare_server_default": True}
                )
                diff = compare_metadata(context, Base.metadata)
        finally:
            engine.dispose()
        assert diff == [], f"models and migrations disagree; write a migration for: {diff}"

    def test_constraint_names_follow_the_convention(self, store_url: str) -> None:
        engine = create_store_engine(store_url)
        try:
            migrate(engine)
            inspector = sa.inspect(engine)
            unique = {c["name"] for c in inspector.get_unique_constraints("trials")}
            foreign = {c["name"] for c in inspector.get_foreign_keys("epochs")}
            indexes = {i["name"] for i in inspector.get_indexes("trials")}
        finally:
            engine.dispose()
        assert "uq_trials__sweep_id_trial_id_attempt" in unique
        assert foreign == {"fk_epochs__trial_pk__trials"}
        assert "ix_trials__sweep_id_status" in indexes


class TestConcurrentMigrate:
    # Two suffice: without the migration lock, two processes fail this test every time.
    @pytest.mark.parametrize("processes", [pytest.param(2, id="two-processes")])
    def test_processes_migrate_at_once(self, store_url: str, processes: int) -> None:
        # spawn, not fork: each process must start with its own driver state, like real ones.
        context = multiprocessing.get_context("spawn")
        barrier = context.Manager().Barrier(processes)
        with ProcessPoolExecutor(processes, mp_context=context) as pool:
            futures = [pool.submit(migrate_after, barrier, store_url) for _ in range(processes)]
            revisions = [future.result(timeout=120) for future in futures]
        assert revisions == [head_revisions()[0]] * processes
        engine = create_store_engine(store_url)
        try:
            with engine.connect() as connection:
                versions = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
                assert versions.scalars().all() == [head_revisions()[0]]
        finally:
            engine.dispose()


# One trial row as every revision since 0001 has it; tests add the columns they look at.
BASE_TRIAL: dict[str, object] = {
    "id": 1, "sweep_id": 1, "trial_id": "t1", "attempt": 1, "lane": "l", "model": "m",
    "model_index": 0, "method": "full", "dss_alpha": 0.5, "seed": 0, "status": "succeeded",
    "gpu_memory_per_device": "[]",
}


def store_at(connection: sa.Connection, revision: str, **trial: object) -> None:
    """Upgrade to `revision`, then write one sweep and one trial row (BASE_TRIAL and `trial`)
    as that revision stores them: the data an upgrade must carry over."""
    command.upgrade(alembic_config(connection), revision)
    connection.execute(sa.text(
        "INSERT INTO sweeps (id, namespace, name, spec, created_at, updated_at) "
        "VALUES (1, '', 'old', '{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
    columns = {**BASE_TRIAL, **trial}
    connection.execute(sa.text(
        f"INSERT INTO trials ({', '.join(columns)}, updated_at) "
        f"VALUES ({', '.join(':' + c for c in columns)}, CURRENT_TIMESTAMP)"), columns)


class TestEvalLossesMigration:
    """0002 adds the separate evaluation losses to a store that already holds results."""

    def test_rows_written_under_0001_survive_and_read_null(self, store_url: str) -> None:
        engine = create_store_engine(store_url)
        try:
            with engine.begin() as connection:
                store_at(connection, "0001", best_eval_loss=0.25, epochs_completed=1)
                connection.execute(sa.text(
                    "INSERT INTO epochs (id, trial_pk, epoch, eval_loss) VALUES (1, 1, 1, 0.25)"))
            migrate(engine)
            assert current_revision(engine) == head_revisions()[0]
            with engine.connect() as connection:
                trial = connection.execute(sa.text(
                    "SELECT best_eval_loss, selection_loss, eval_label_loss, "
                    "eval_rationale_loss FROM trials")).one()
                epoch = connection.execute(sa.text(
                    "SELECT eval_loss, eval_label_loss, eval_rationale_loss, eval_dss_loss "
                    "FROM epochs")).one()
            assert tuple(trial) == (0.25, None, None, None)
            assert tuple(epoch) == (0.25, None, None, None)
            with engine.begin() as connection:
                command.downgrade(alembic_config(connection), "0001")
            columns = {c["name"] for c in sa.inspect(engine).get_columns("epochs")}
            assert "eval_dss_loss" not in columns and "eval_loss" in columns
        finally:
            engine.dispose()


class TestEarlyStoppingMigration:
    """0005 adds where and why a trial stopped; older rows read NULL, and it goes back."""

    def test_rows_from_before_read_null_and_it_downgrades(self, store_url: str) -> None:
        engine = create_store_engine(store_url)
        try:
            with engine.begin() as connection:
                store_at(connection, "0002", epochs_completed=3)
                command.upgrade(alembic_config(connection), "0005")
                row = connection.execute(sa.text(
                    "SELECT epochs_completed, stopped_epoch, stop_reason FROM trials")).one()
            assert tuple(row) == (3, None, None)
            with engine.begin() as connection:
                command.downgrade(alembic_config(connection), "0002")
            columns = {c["name"] for c in sa.inspect(engine).get_columns("trials")}
            assert "stop_reason" not in columns and "stopped_epoch" not in columns
        finally:
            engine.dispose()


class TestGenerationMetricsMigration:
    """0003 adds the generation metrics and end-to-end samples/s to a store with results."""

    def test_rows_written_under_0002_survive_and_read_null(self, store_url: str) -> None:
        engine = create_store_engine(store_url)
        try:
            with engine.begin() as connection:
                store_at(connection, "0002", exact_match=0.5, epochs_completed=1)
            migrate(engine)
            assert current_revision(engine) == head_revisions()[0]
            with engine.connect() as connection:
                trial = connection.execute(sa.text(
                    "SELECT exact_match, bleu, chrf, ter, dsl_similarity, "
                    "end_to_end_samples_per_second FROM trials")).one()
            assert tuple(trial) == (0.5, None, None, None, None, None)
            with engine.begin() as connection:
                command.downgrade(alembic_config(connection), "0002")
            columns = {c["name"] for c in sa.inspect(engine).get_columns("trials")}
            assert "bleu" not in columns and "exact_match" in columns
        finally:
            engine.dispose()
