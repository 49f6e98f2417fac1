"""What validates must reconcile (issue 12, class 2), on SQLite and on a real PostgreSQL.

Property: for a hypothesis-generated Sweep that `ladder validate` accepts (the spec model and
the controller's `spec.execution` model), a reconcile pass against the fake cluster of
tests/unit/operator and a real store ends with a status, launches RayJobs whose names and
labels the apiserver would accept, and never fails (no exception, no ReconcileError): a
second pass after a RayJob fails settles the attempt the same way. The specs start from a
valid one and take hostile values in one to three fields: boundary integers (int32, int64,
beyond), tiny and huge floats, NUL and surrogates, markup, newlines, long text, memory
quantities around one byte and 8 EiB, builtin dataset names, runtime-environment shapes.
"""

from __future__ import annotations

import copy
import itertools
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import store
from orchestrator.core.plan import SweepPhase
from orchestrator.core.spec import SpecError, parse_sweep
from orchestrator.operator.manifests import (
    LABEL_SWEEP,
    SecretRef,
    checked_execution_config,
    is_dns_label,
    label_value,
)
from orchestrator.operator.reconcile import Reconciler
from tests.unit.operator.test_reconcile import NS, FakeCluster

BASE: dict[str, Any] = {
    "ladder": ["ladder/t5-tiny-s", "ladder/t5-tiny-m"],
    "methods": ["full", "lora"],
    "adapters": [{"rank": 8, "alphas": [16]}],
    "training": {"epochs": 1},
    "resources": {"workers": 1, "gpusPerWorker": 0},
    "escalation": {"retries": 1},
    "parallelism": 2,
}

INTS = st.sampled_from([
    0, 1, 2, 7, 2**31 - 2, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, -1, -(2**63),
    -(2**63) - 1, 10**30,
])
FLOATS = st.sampled_from([
    5e-324, 1e-300, 1e-12, 1.0000001e-5, 1.0000002e-5, 0.1, 0.5, 0.999999, 1.0, 1e10, 1e300,
    1.7976931348623157e308, -0.0, 2.0**63, 2.0**64,
])
TEXTS = st.sampled_from([
    "", "m", "a\x00b", "\ud800", "[/x]", "[bold]m[/bold]", "x\n", " ", "é" * 300, "a" * 257,
    "builtin:querydsl", "builtin:nope", "builtin:", "/abs/path", "../../etc", "$(rm -rf /)",
    "ladder/t5-tiny-s", "'quote\"", "line\nbreak",
]) | st.text(max_size=12)
QUANTITIES = st.sampled_from([
    "0", "0.0", "0.5", "1", "0.001Ki", "1Ki", "24Gi", "7Ei", "7.9Ei", "8Ei", "9Ei",
    "99999999999999999999", "1.5", "24Gi\n", " 24Gi", "1m",
])
VALUES = INTS | FLOATS | TEXTS | st.booleans() | st.none()

# (path in the spec, strategy of values to put there)
TARGETS: list[tuple[tuple[str, ...], st.SearchStrategy[Any]]] = [
    (("ladder",), st.lists(TEXTS, min_size=1, max_size=3)),
    (("adapters",), st.lists(st.fixed_dictionaries(
        {"rank": INTS, "alphas": st.lists(INTS, min_size=1, max_size=2)}), max_size=2)),
    (("axes", "seed"), st.lists(INTS, min_size=1, max_size=3)),
    (("axes", "dssAlpha"), st.lists(FLOATS, min_size=1, max_size=3)),
    (("axes", "learningRate"), st.lists(FLOATS, min_size=1, max_size=3)),
    (("axes", "batchSize"), st.lists(INTS, min_size=1, max_size=2)),
    (("axes", "loraDropout"), st.lists(FLOATS, min_size=1, max_size=2)),
    (("training", "epochs"), INTS),
    (("training", "batchSize"), INTS),
    (("training", "microBatchSize"), INTS),
    (("training", "maxInputTokens"), INTS),
    (("training", "maxOutputTokens"), INTS),
    (("training", "learningRate"), FLOATS),
    (("training", "weightDecay"), FLOATS),
    (("training", "tokenizer"), TEXTS),
    (("training", "targetModules"), TEXTS | st.lists(TEXTS, max_size=2)),
    (("training", "generateLimit"), INTS),
    (("training", "lrPlateau", "patience"), INTS),
    (("dataset", "source"), TEXTS),
    (("dataset", "splitSeed"), INTS),
    (("dataset", "size"), INTS),
    (("dataset", "evalFraction"), FLOATS),
    (("resources", "workers"), INTS),
    (("resources", "gpusPerWorker"), INTS),
    (("resources", "cpusPerWorker"), INTS),
    (("escalation", "retries"), INTS),
    (("escalation", "memoryBudget"), QUANTITIES),
    (("escalation", "deviceMemory"), QUANTITIES),
    (("parallelism",), INTS),
    (("maxTrials",), INTS),
    (("execution", "runtimeEnv"), st.sampled_from([
        {"env_vars": ["A=1"]}, {"env_vars": "A=1"}, {"env_vars": {"A": {"b": 1}}},
        {"env_vars": {"A": 1, "B": True}}, {"env_vars": None}, {"pip": ["x"]}, {"pip": 5},
        {"working_dir": "s3://b/k"}, [], "x",
    ])),
    (("execution", "capacity"), st.sampled_from([
        {"gpus": 0}, {"gpus": -1}, {"cpus": 2**40}, {"tpus": 1}, {"gpus": 1.5}, None,
    ])),
    (("execution", "outputDir"), TEXTS),
    (("execution", "image"), TEXTS),
    (("execution", "python"), TEXTS),
    (("execution", "ttlSecondsAfterFinished"), INTS),
    (("execution", "activeDeadlineSeconds"), INTS),
    (("execution", "stallTimeoutSeconds"), FLOATS),
    (("execution", "sharedMemory"), QUANTITIES),
    (("execution", "env"), st.lists(st.fixed_dictionaries({"name": TEXTS, "value": VALUES}),
                                    max_size=2)),
    (("execution", "nodeSelector"), st.dictionaries(TEXTS, TEXTS, max_size=2)),
    (("execution", "clusterSelector"), st.dictionaries(TEXTS, TEXTS, max_size=2)),
    (("execution", "head"), st.fixed_dictionaries(
        {}, optional={"cpu": TEXTS | INTS, "memory": TEXTS | QUANTITIES,
                      "resources": st.dictionaries(TEXTS, TEXTS | INTS, max_size=2)})),
    (("execution", "worker"), st.fixed_dictionaries(
        {}, optional={"cpu": TEXTS | INTS, "memory": TEXTS | QUANTITIES})),
    (("execution", "volumes"), st.lists(st.dictionaries(TEXTS, VALUES, max_size=2),
                                        max_size=2)),
    (("execution", "volumeMounts"), st.lists(st.dictionaries(TEXTS, VALUES, max_size=2),
                                             max_size=2)),
    (("execution", "tolerations"), st.lists(st.dictionaries(TEXTS, VALUES, max_size=2),
                                            max_size=2)),
    (("execution", "imagePullSecrets"), st.lists(TEXTS, max_size=2)),
    (("execution", "dbSecret"), st.fixed_dictionaries({"name": TEXTS}, optional={"key": TEXTS})),
    (("execution", "rayVersion"), TEXTS),
    (("execution", "imagePullPolicy"), TEXTS),
    (("resources", "overrides"), st.fixed_dictionaries(
        {"ladder/t5-tiny-m": st.fixed_dictionaries(
            {}, optional={"workers": INTS, "gpusPerWorker": INTS, "cpusPerWorker": INTS})})),
    (("training", "precision"), st.sampled_from(["bf16", "fp32"])),
    (("training", "init"), st.sampled_from(["pretrained", "random"])),
    (("training", "saveModel"), st.sampled_from(["none", "best", "final"])),
    (("suspend",), st.booleans()),
]


@st.composite
def hostile_specs(draw: st.DrawFn) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    for path, values in draw(st.lists(st.sampled_from(TARGETS), min_size=1, max_size=3,
                                      unique_by=lambda t: t[0])):
        node = spec
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = draw(values)
    return spec


def _validates(name: str, spec: dict[str, Any]) -> bool:
    """What `ladder validate` says of the spec (the spec model, then `spec.execution`)."""
    document = {"apiVersion": "ladder.dev/v1alpha1", "kind": "Sweep",
                "metadata": {"name": name, "namespace": NS}, "spec": spec}
    try:
        checked_execution_config(parse_sweep(document))
    except SpecError:
        return False
    return True


def _assert_apiserver_would_take(cluster: FakeCluster) -> None:
    for (_, name), job in cluster.rayjobs.items():
        assert is_dns_label(name), name
        for key, value in job["metadata"]["labels"].items():
            assert label_value(value) == value, (key, value)


PROPERTY = settings(
    max_examples=int(os.environ.get("HS_EXAMPLES", "20")), deadline=None,
    derandomize=os.environ.get("HS_EXAMPLES") is None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.filter_too_much],
)
_names = itertools.count(1)


@pytest.fixture
def sessions(store_url: str) -> sessionmaker[Session]:
    return store.open_store(store_url)


@PROPERTY
@given(spec=hostile_specs())
def test_a_validated_spec_reconciles(sessions: sessionmaker[Session],
                                     spec: dict[str, Any]) -> None:
    name = f"hostile-{next(_names)}"
    assume(_validates(name, spec))
    cluster = FakeCluster()
    cluster.add_sweep(name, spec)
    reconciler = Reconciler(cluster, sessions, db_secret=SecretRef(name="ladder-db"))

    result = reconciler.reconcile(NS, name)
    assert result is not None
    assert result.error is None, result.error
    assert result.invalid is None, result.invalid
    status = cluster.sweeps[(NS, name)]["status"]
    assert status["phase"] in {phase.value for phase in SweepPhase}
    assert status["trials"]["total"] == parse_sweep(
        {"apiVersion": "ladder.dev/v1alpha1", "kind": "Sweep",
         "metadata": {"name": name, "namespace": NS}, "spec": spec}
    ).spec.potential_trials
    _assert_apiserver_would_take(cluster)

    # An attempt that fails on the cluster is settled by the next pass, also without error.
    jobs = [job for (_, job), body in cluster.rayjobs.items()
            if body["metadata"]["labels"][LABEL_SWEEP] == name]
    if jobs:
        cluster.finish(jobs[0], "FAILED", "Failed", "exit code 1")
    again = reconciler.reconcile(NS, name)
    assert again is not None and again.error is None, again.error
    _assert_apiserver_would_take(cluster)
