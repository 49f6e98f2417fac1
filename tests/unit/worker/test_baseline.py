"""The baseline (training.baseline): the untuned model evaluated as epoch 0, measured as every
epoch is measured, never the best epoch, and stored and read back as it was."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from orchestrator.core.catalog import ARCHITECTURES
from orchestrator.core.lifecycle import TrialState
from orchestrator.core.worker_contract import AttemptResult, AttemptSpec, EpochRecord
from worker.data.batching import encode_examples
from worker.data.querydsl import generate_querydsl
from worker.generation import generate_texts, score_generations
from worker.models import random_t5
from worker.telemetry import Sampler
from worker.tokenizer import ByteTokenizer
from worker.train import Progress, baseline, evaluate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TRIAL = AttemptSpec(sweep="s", trial_id="t", lane="l", model="ladder/t5-tiny-s", method="full",
                  dss_alpha=1.0, training={"init": "random", "precision": "fp32",
                                           "maxOutputTokens": 8, "generateLimit": 3})


def test_the_baseline_is_the_untuned_models_evaluation() -> None:
    torch.manual_seed(0)
    tokenizer = ByteTokenizer()
    examples = generate_querydsl(4, seed=3, preamble="short")
    encoded = encode_examples(examples, tokenizer, 96, 8)
    model = random_t5(ARCHITECTURES["ladder/t5-tiny-s"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    accelerator = Accelerator(cpu=True)
    with Sampler(torch.device("cpu")) as sampler:
        record, _ = baseline(accelerator, model, encoded, examples, tokenizer, 2, TRIAL, sampler,
                             1e-3)

    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # untouched
    label, rationale, _ = evaluate(accelerator, model, encoded, tokenizer, 2, 1.0,
                                   with_rationale=True)
    assert record.epoch == 0 and record.train_loss is None and record.samples_per_second is None
    # dssAlpha 1 trains no rationale, but the baseline measures it all the same.
    assert (record.eval_label_loss, record.eval_rationale_loss) == (label, rationale)
    assert record.eval_loss == label  # training.selectionLoss: label by default
    texts = generate_texts(model, tokenizer, encoded[:3], batch_size=2, max_new_tokens=8,
                           device=torch.device("cpu"))
    score = score_generations(texts, [e.label for e in examples[:3]])
    assert (record.exact_match, record.json_valid_rate) == (score.exact_match,
                                                             score.json_valid_rate)


def epoch(n: int, loss: float) -> EpochRecord:
    trained = {"train_loss": 1.0, "train_label_loss": 1.0, "samples_per_second": 5.0} if n else {}
    return EpochRecord(epoch=n, eval_loss=loss, learning_rate=1e-3, wall_seconds=1.0,
                       exact_match=0.0 if n == 0 else None, **trained)


def test_the_baseline_is_never_the_best_epoch_nor_counted() -> None:
    progress = Progress(first_step_seconds=1.0, trainable=1, total=1, sink=None)
    from worker.telemetry import TrialTelemetry

    for record in (epoch(0, 0.5), epoch(1, 2.0), epoch(2, 1.0)):  # training made it worse
        progress.add(record, TrialTelemetry())
    summary = progress.summary()
    assert (summary["best_epoch"], summary["best_eval_loss"]) == (2, 1.0)
    assert summary["epochs_completed"] == 2
    assert (summary["baseline_eval_loss"], summary["baseline_exact_match"]) == (0.5, 0.0)


def test_epoch_zero_round_trips_through_the_store(tmp_path) -> None:
    import math

    from orchestrator import store

    sessions = store.open_store(f"sqlite:///{tmp_path / 'l.db'}")
    diverged = epoch(1, 2.0).model_copy(update={"train_loss": math.nan})
    result = AttemptResult.for_trial(TRIAL, status=TrialState.SUCCEEDED,
                                   epochs=[epoch(0, 3.0), diverged], baseline_eval_loss=3.0,
                                   baseline_exact_match=0.0, best_eval_loss=2.0, best_epoch=1)
    with sessions.begin() as session:
        store.record_result(session, result)
    with sessions() as session:
        (row,) = store.all_attempts(session, with_epochs=True)
        back = store.to_result(row)
    base, first = back.epochs
    assert base == epoch(0, 3.0)  # its missing train loss stays missing
    assert math.isnan(first.train_loss)  # a trained epoch's NaN (stored NULL) comes back NaN
    assert (back.baseline_eval_loss, back.baseline_exact_match) == (3.0, 0.0)
