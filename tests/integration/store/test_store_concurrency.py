"""Concurrent writers: processes racing to record one attempt's outcome agree on one winner."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.core.lifecycle import TrialState
from orchestrator.core.worker_contract import AttemptSpec
from orchestrator.store import AttemptRow, EpochRow, epochs_of, to_result
from tests.integration.store.store_helpers import failed, record_after, succeeded

pytestmark = pytest.mark.integration


class TestRacingResults:
    @pytest.mark.parametrize(
        "statuses",
        [
            pytest.param(
                [TrialState.SUCCEEDED, TrialState.FAILED, TrialState.OOM, TrialState.CANCELLED],
                id="different-outcomes",
            ),
            pytest.param([TrialState.SUCCEEDED] * 4, id="same-outcome"),
        ],
    )
    def test_one_outcome_wins_everywhere(
        self, factory: sessionmaker[Session], store_url: str, spec: AttemptSpec,
        statuses: list[TrialState],
    ) -> None:
        results = [
            succeeded(spec) if status is TrialState.SUCCEEDED else failed(spec, status)
            for status in statuses
        ]
        context = multiprocessing.get_context("spawn")
        barrier = context.Manager().Barrier(len(results))
        with ProcessPoolExecutor(len(results), mp_context=context) as pool:
            futures = [
                pool.submit(record_after, barrier, store_url, result.model_dump_json())
                for result in results
            ]
            seen = {future.result(timeout=120) for future in futures}
        # Every writer was told the same stored outcome, and it is one that was written.
        assert len(seen) == 1
        (winner,) = seen
        with factory() as session:
            (row,) = session.execute(sa.select(AttemptRow)).unique().scalars()
            assert row.status == winner
            expected = next(r for r in results if r.status == winner)
            assert to_result(row, epochs_of(session, row.id)) == expected
            count = session.scalar(sa.select(sa.func.count()).select_from(EpochRow))
            assert count == len(expected.epochs)
