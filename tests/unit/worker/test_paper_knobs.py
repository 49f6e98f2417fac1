"""The knobs that set the authors' recipe (issue 14), each shown changing what it should, and
the DSS loss against the paper's equation computed by hand.

- training.attention: the kernel chosen is the one the model runs;
- training.tf32: the CUDA flags follow it;
- training.lossReduction: token-mean and example-mean each equal a hand computation;
- training.gradientAccumulationSteps: a step averages its batches' gradients (HF's rule);
- training.qloraWeightDtype: QLoRA's frozen, unquantized weights take that dtype;
- training.saveModel every-epoch: weights and optimizer state after every epoch.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from torch import Tensor, nn

from orchestrator.core.spec import Attention, LossReduction, SaveModel, Training, WeightDtype
from orchestrator.core.worker_contract import AttemptSpec
from worker.data.batching import IGNORE_INDEX, collate, encode_examples
from worker.data.querydsl import generate_querydsl
from worker.models import OPTIMIZER_STATE, build_model, save_trained
from worker.tokenizer import ByteTokenizer
from worker.train import dss_forward, set_tf32, train_step


def trial(method: str = "full", **training: object) -> AttemptSpec:
    adapters = {} if method == "full" else {"rank": 4, "alpha": 8}
    return AttemptSpec(
        sweep="s", trial_id="t", lane="l", model="ladder/t5-tiny-s", method=method,
        training={"init": "random", "precision": "fp32", **training}, **adapters,
    )


def tiny(method: str = "full", **training: object) -> nn.Module:
    torch.manual_seed(0)
    model, _, _ = build_model(trial(method, **training), torch.device("cpu"))
    return model.eval()  # no dropout: losses and gradients are deterministic


def batches(count: int, size: int, seed: int = 3) -> list[dict[str, Tensor]]:
    tokenizer = ByteTokenizer()
    encoded = encode_examples(generate_querydsl(count * size, seed=seed, preamble="short"),
                              tokenizer, 96, 64)
    return [collate(encoded[i:i + size], tokenizer.pad_token_id)
            for i in range(0, count * size, size)]


def hand_token_losses(model: nn.Module, input_ids: Tensor, mask: Tensor,
                      labels: Tensor) -> list[Tensor]:
    """Each example's per-token cross-entropy, from the logits by log-softmax and gather."""
    logits = model(input_ids=input_ids, attention_mask=mask, labels=labels).logits.float()
    out = []
    for row_logits, row_labels in zip(logits, labels, strict=True):
        keep = row_labels != IGNORE_INDEX
        log_probs = torch.log_softmax(row_logits[keep], dim=-1)
        out.append(-log_probs.gather(1, row_labels[keep].unsqueeze(1)).squeeze(1))
    return out


# --- attention ------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", list(Attention), ids=lambda a: a.value)
def test_the_chosen_attention_is_the_one_the_model_runs(
    attention: Attention, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args: object, **kwargs: object) -> Tensor:
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    model = tiny(attention=attention.value)
    assert model.config._attn_implementation == attention.value
    (batch,) = batches(1, 2)
    loss, _, _ = dss_forward(model, batch, 0.5)
    assert torch.isfinite(loss)
    assert bool(calls) is (attention is Attention.SDPA)


def test_both_kernels_compute_the_same_loss() -> None:
    (batch,) = batches(1, 2)
    losses = [dss_forward(tiny(attention=a.value), batch, 0.5)[0] for a in Attention]
    assert losses[0].item() == pytest.approx(losses[1].item(), rel=1e-4)


def test_sdpa_stays_the_default() -> None:
    assert Training().attention is Attention.SDPA


# --- TF32 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("enabled", [True, False])
def test_tf32_sets_the_cuda_flags(enabled: bool) -> None:
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        set_tf32(enabled)
        assert torch.backends.cuda.matmul.allow_tf32 is enabled
        assert torch.backends.cudnn.allow_tf32 is enabled
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


# --- loss reduction --------------------------------------------------------------------------


def test_each_loss_reduction_matches_a_hand_computation() -> None:
    model = tiny()
    (batch,) = batches(1, 3)
    with torch.no_grad():
        per_example = hand_token_losses(model, batch["predict_input_ids"],
                                        batch["predict_attention_mask"], batch["labels"])
        lengths = {len(t) for t in per_example}
        assert len(lengths) > 1, "the examples need different label lengths to tell apart"
        token_mean = torch.cat(per_example).mean()
        example_mean = torch.stack([t.mean() for t in per_example]).mean()
        _, by_token, _ = dss_forward(model, batch, 1.0, LossReduction.TOKEN_MEAN)
        _, by_example, _ = dss_forward(model, batch, 1.0, LossReduction.EXAMPLE_MEAN)
    assert by_token.item() == pytest.approx(token_mean.item(), rel=1e-5)
    assert by_example.item() == pytest.approx(example_mean.item(), rel=1e-5)
    assert abs(by_token.item() - by_example.item()) > 1e-4  # they are different quantities


def _update(model: nn.Module, passes: list[dict[str, Tensor]], **kwargs: object) -> Tensor:
    """The parameter change of one SGD step at learning rate 1: minus the applied gradient."""
    before = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    train_step(Accelerator(cpu=True), model, optimizer, passes, 0.5, **kwargs)
    return torch.cat([(p - q).detach().flatten()
                      for p, q in zip(model.parameters(), before.parameters(), strict=True)])


def _split(batch: dict[str, Tensor], at: int) -> list[dict[str, Tensor]]:
    return [{k: v[:at] for k, v in batch.items()}, {k: v[at:] for k, v in batch.items()}]


@pytest.mark.parametrize("reduction", list(LossReduction), ids=lambda r: r.value)
def test_micro_batches_keep_each_reduction(reduction: LossReduction) -> None:
    (batch,) = batches(1, 3)
    whole = _update(tiny(), [batch], reduction=reduction)
    split = _update(tiny(), _split(batch, 1), reduction=reduction)
    torch.testing.assert_close(split, whole, rtol=1e-4, atol=1e-6)


def test_accumulation_averages_the_batches_gradients() -> None:
    first, second = batches(2, 2)
    alone = [_update(tiny(), [b]) for b in (first, second)]
    accumulated = _update(tiny(), [first, second], group_of=[0, 1])
    torch.testing.assert_close(accumulated, (alone[0] + alone[1]) / 2, rtol=1e-4, atol=1e-6)
    # Micro-batches inside accumulated batches: the same step.
    micro = _update(tiny(), [*_split(first, 1), *_split(second, 1)], group_of=[0, 0, 1, 1])
    torch.testing.assert_close(micro, accumulated, rtol=1e-4, atol=1e-6)


def test_accumulation_is_off_by_default_and_validated() -> None:
    assert Training().gradient_accumulation_steps == 1
    assert Training.model_validate({"gradientAccumulationSteps": 4}) \
        .gradient_accumulation_steps == 4
    with pytest.raises(ValueError):
        Training.model_validate({"gradientAccumulationSteps": 0})


# --- the DSS loss against the paper's equation -----------------------------------------------


@pytest.mark.parametrize("a", [0.5, 1.0])
def test_dss_loss_is_the_papers_equation_on_one_example_per_worker(a: float) -> None:
    """L = a * L_label + (1 - a) * L_rationale (docs/paper.md, "Training recipe"), each task's
    loss the mean cross-entropy of the example's target tokens, computed by hand. At one
    example per worker both reductions are this."""
    model = tiny()
    (batch,) = batches(1, 1)
    with torch.no_grad():
        (label,) = hand_token_losses(model, batch["predict_input_ids"],
                                     batch["predict_attention_mask"], batch["labels"])
        (rationale,) = hand_token_losses(model, batch["explain_input_ids"],
                                         batch["explain_attention_mask"],
                                         batch["rationale_labels"])
        expected = a * label.mean() + (1 - a) * rationale.mean()
    for reduction in LossReduction:
        with torch.no_grad():
            loss, label_loss, _ = dss_forward(model, batch, a, reduction)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        assert label_loss.item() == pytest.approx(label.mean().item(), rel=1e-5)
    stepped = train_step(Accelerator(cpu=True), model, torch.optim.SGD(model.parameters(), lr=0.0),
                         [batch], a, reduction=LossReduction.EXAMPLE_MEAN)
    assert stepped[0].item() == pytest.approx(expected.item(), rel=1e-5)


# --- QLoRA's unquantized weights -------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(WeightDtype), ids=lambda d: d.value)
def test_qlora_weight_dtype_sets_the_frozen_unquantized_weights(dtype: WeightDtype) -> None:
    want = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype.value]
    model = tiny("qlora", qloraWeightDtype=dtype.value, precision="bf16")
    frozen = {name: p.dtype for name, p in model.named_parameters()
              if not p.requires_grad and p.is_floating_point()
              and p.__class__.__name__ != "Params4bit"}
    wo = {name for name in frozen if ".wo." in name}
    assert wo, "T5 keeps `wo` out of the quantization"
    assert {frozen[name] for name in wo} == {torch.float32}  # T5's _keep_in_fp32_modules
    assert {dt for name, dt in frozen.items() if name not in wo} == {want}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    (batch,) = batches(1, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # QLoRA's bf16 compute
        loss, _, _ = dss_forward(model, batch, 0.5)
    assert torch.isfinite(loss)


def test_qlora_weights_stay_fp32_by_default() -> None:
    assert Training().qlora_weight_dtype is WeightDtype.FP32


# --- a checkpoint every epoch ----------------------------------------------------------------


def test_every_epoch_saves_weights_and_optimizer_state_each_epoch(tmp_path: Path) -> None:
    assert all(SaveModel.EVERY_EPOCH.saves_after(epoch, 3, 1) for epoch in (1, 2, 3))
    assert [SaveModel.FINAL.saves_after(e, 3, 1) for e in (1, 2, 3)] == [False, False, True]
    model = tiny("lora")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    (batch,) = batches(1, 1)
    train_step(Accelerator(cpu=True), model, optimizer, [batch], 0.5)
    saved = save_trained(model, ByteTokenizer(), tmp_path / "model", {"epoch": 1},
                         optimizer_state=optimizer.state_dict())
    state = torch.load(saved / OPTIMIZER_STATE, weights_only=True)
    assert state["state"] and len(state["state"]) == len(optimizer.param_groups[0]["params"])
    assert not (save_trained(model, ByteTokenizer(), tmp_path / "best", {})
                / OPTIMIZER_STATE).exists()


def test_qlora_with_fp16_weights_generates_outside_autocast() -> None:
    """A bf16 autocast cannot concatenate the fp16 KV cache that fp16 frozen weights make;
    generation then runs without autocast (worker.train.generation_autocast) and works."""
    from worker.data.batching import encode_examples as encode
    from worker.generation import generate_texts
    from worker.train import generation_autocast

    spec = trial("qlora", qloraWeightDtype="fp16", precision="bf16")
    model = tiny("qlora", qloraWeightDtype="fp16", precision="bf16")
    tokenizer = ByteTokenizer()
    encoded = encode(generate_querydsl(2, seed=3, preamble="short"), tokenizer, 96, 64)
    accelerator = Accelerator(cpu=True)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError,
                                                                     match="prioritize"):
        generate_texts(model, tokenizer, encoded, batch_size=2, max_new_tokens=3,
                       device=torch.device("cpu"))
    with generation_autocast(accelerator, spec):
        texts = generate_texts(model, tokenizer, encoded, batch_size=2, max_new_tokens=3,
                               device=torch.device("cpu"))
    assert len(texts) == 2
    assert isinstance(generation_autocast(accelerator, trial("qlora")),
                      type(accelerator.autocast()))
