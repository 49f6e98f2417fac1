"""PostgreSQL stopped mid-sweep (`pg_ctl stop -m immediate`: as if it crashed, every client
cut off), then started again on the same port (crash recovery included).

While it is away: the controller's passes fail and are retried by Kopf after one interval
(`kopf.TemporaryError`, logged "store unavailable"), nothing is decided; the running trials
cannot write their epochs and keep retrying their result (`worker.result.store_result`, up
to LADDER_RESULT_RETRY_SECONDS); their RayJobs stay Running meanwhile. Afterwards the sweep
must end as an undisturbed one (`rig.assert_sweep_intact`: every result and every epoch in
the store, no attempt failed), with the same controller process.

An 8 s outage runs by default; the 30 s one is in the soak (`LADDER_SOAK=1`).
"""

from __future__ import annotations

import time

import pytest

from orchestrator.core.lifecycle import TrialState
from tests.k8s.operator_harness import wait_for
from tests.reliability.pgserver import PostgresServer
from tests.reliability.rig import Rig, assert_sweep_intact

pytestmark = [pytest.mark.k8s, pytest.mark.postgres]


@pytest.mark.timeout(420)
@pytest.mark.parametrize("outage", [8.0, pytest.param(30.0, marks=pytest.mark.soak)])
def test_sweep_survives_a_store_outage(pg_rig: Rig, postgres_server: PostgresServer,
                                       outage: float) -> None:
    rig = pg_rig
    name = f"pg-{int(outage)}"
    controller = rig.controller()
    rig.submit(name, epoch_seconds=2.0)
    # Stop the database while the first rung's trials are between their first epoch (written
    # live) and their result (2 s later): both will end while it is away.
    wait_for("two trials past their first epoch", lambda: sum(
        r.status == TrialState.RUNNING and r.epochs_completed >= 1 for r in rig.rows(name)
    ) == 2, timeout=90, interval=0.1, diagnose=lambda: rig.diagnose(name))
    postgres_server.stop("immediate")
    stopped = time.monotonic()
    while time.monotonic() - stopped < outage:
        assert controller.alive(), rig.diagnose(name)
        time.sleep(0.5)
    postgres_server.start()

    rig.wait_finished(name, timeout=240)
    time.sleep(2.0)
    assert controller.alive() and controller.starts == 1, rig.diagnose(name)
    assert_sweep_intact(rig, name)
    assert rig.standin is not None and rig.standin.errors == []
    # The outage was felt, and survived the way it should: the controller backed off...
    logs = controller.logs()
    assert "store unavailable" in logs, logs
    # ...and workers whose trial ended while the store was away retried their result.
    worker_logs = "\n".join(job.log_path.read_text(errors="replace")
                            for job in rig.standin.jobs.values() if job.log_path)
    assert "not written yet" in worker_logs, worker_logs[-4000:]
