"""Benchmark: the worker's training step against a minimal hand-written PyTorch loop.

    python tests/bench/bench_step.py [--quick] [--model ladder/t5-tiny-m] [--method full]
                                     [--device cpu|cuda] [--precision fp32|bf16]

The worker's side is the worker's own code: `worker.models.build_model`, the batches of
`worker.data.batching` collated per step (`worker.train.to_device`), Accelerate's `prepare`,
and `worker.train.train_step` (autocast, the DSS loss, token-weighted passes, backward, AdamW
step) with the on-device running sums `train()` keeps. The anchor is what a person would
write by hand: the same model (built the same way, same seed), the same batches already
collated and on the device,
`model(...).loss` twice, a * L_label + (1 - a) * L_rationale, `backward`, `step`,
`zero_grad`. Both run in this process, interleaved round by round (A B A B ...) so that a
busy machine slows both alike; the figure is the median samples/s over rounds (one sample =
one DSS example, its two tasks), and the ratio worker/hand (target >= 0.95).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.bench.output import emit  # noqa: E402

TARGET = 0.95


def _trial(model: str, method: str, precision: str, max_in: int, max_out: int,
           batch: int) -> Any:
    from orchestrator.core.spec import Training
    from orchestrator.core.worker_contract import AttemptSpec

    uses_adapters = method != "full"
    return AttemptSpec(
        sweep="bench-step", trial_id="step", lane="bench", model=model, method=method,
        rank=8 if uses_adapters else None, alpha=16 if uses_adapters else None,
        training=Training(precision=precision, init="random", max_input_tokens=max_in,
                          max_output_tokens=max_out, batch_size=batch, learning_rate=1e-4),
    )


def run(
    *, model: str = "ladder/t5-tiny-m", method: str = "full", device: str = "cpu",
    precision: str = "fp32", batch: int = 8, max_in: int = 160, max_out: int = 96,
    steps: int = 8, rounds: int = 5, warmup: int = 2, threads: int = 1,
) -> dict[str, Any]:
    import torch
    from accelerate import Accelerator

    from orchestrator.core.spec import Precision
    from worker.data.batching import encode_examples, length_grouped_batches
    from worker.data.dss import load_dss
    from worker.models import build_model
    from worker.train import to_device, train_step

    if device == "cpu":
        torch.set_num_threads(threads)  # the worker's own setting: cpus_per_worker
    dev = torch.device(device)
    trial = _trial(model, method, precision, max_in, max_out, batch)
    a = trial.dss_alpha
    examples = load_dss("builtin:querydsl", size=max(64, batch * (steps + warmup)),
                        preamble="short", seed=0)

    # --- the worker's step, from the worker's pieces ---------------------------------------
    bf16 = trial.training.precision is Precision.BF16
    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=device == "cpu")
    torch.manual_seed(trial.seed)
    w_model, tokenizer, info = build_model(trial, dev)
    encoded = encode_examples(examples, tokenizer, max_in, max_out)
    batches = length_grouped_batches(encoded, batch, seed=0, epoch=1)[: steps + warmup]
    w_opt = torch.optim.AdamW([p for p in w_model.parameters() if p.requires_grad],
                              lr=1e-4, fused=dev.type == "cuda")
    w_model, w_opt = accelerator.prepare(w_model, w_opt)
    w_model.train()
    sums = torch.zeros(3, device=dev)

    def worker_steps(indices_list: list[list[int]]) -> None:
        nonlocal sums
        for indices in indices_list:  # as train() does: one pass per step (no micro-batches)
            sums += train_step(
                accelerator, w_model, w_opt, [to_device(encoded, indices, tokenizer, dev)], a
            )

    # --- the hand-written loop: same model, data, batch and precision ----------------------
    torch.manual_seed(trial.seed)
    h_model, _, _ = build_model(trial, dev)
    h_opt = torch.optim.AdamW([p for p in h_model.parameters() if p.requires_grad],
                              lr=1e-4, fused=dev.type == "cuda")
    h_model.train()
    ready = [to_device(encoded, indices, tokenizer, dev) for indices in batches]
    autocast_dtype = torch.bfloat16 if bf16 else None

    def hand_steps(prepared: list[dict[str, Any]]) -> None:
        for b in prepared:
            with torch.autocast(dev.type, dtype=autocast_dtype, enabled=bf16):
                label = h_model(input_ids=b["predict_input_ids"],
                                attention_mask=b["predict_attention_mask"],
                                labels=b["labels"]).loss
                rationale = h_model(input_ids=b["explain_input_ids"],
                                    attention_mask=b["explain_attention_mask"],
                                    labels=b["rationale_labels"]).loss
                loss = a * label + (1 - a) * rationale
            loss.backward()
            h_opt.step()
            h_opt.zero_grad(set_to_none=True)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    worker_steps(batches[:warmup])
    hand_steps(ready[:warmup])
    sync()
    timed_batches, timed_ready = batches[warmup:], ready[warmup:]
    examples_per_round = sum(len(b) for b in timed_batches)
    worker_rates, hand_rates = [], []
    for _ in range(rounds):
        for steps_fn, data, rates in ((worker_steps, timed_batches, worker_rates),
                                      (hand_steps, timed_ready, hand_rates)):
            sync()
            start = time.perf_counter()
            steps_fn(data)
            if steps_fn is worker_steps:
                float(sums[0])  # the worker's one host sync per epoch
            sync()
            rates.append(examples_per_round / (time.perf_counter() - start))
    worker_rate, hand_rate = statistics.median(worker_rates), statistics.median(hand_rates)
    return {
        "model": model, "method": method, "device": device, "precision": precision,
        "batch": batch, "max_input_tokens": max_in, "max_output_tokens": max_out,
        "steps_per_round": len(timed_batches), "rounds": rounds, "threads": threads,
        "trainable_parameters": info.trainable_parameters,
        "worker_samples_per_second": worker_rate, "hand_samples_per_second": hand_rate,
        "worker_rounds": worker_rates, "hand_rounds": hand_rates,
        "ratio": worker_rate / hand_rate, "target": TARGET,
    }


def report(r: dict[str, Any]) -> str:
    verdict = "meets" if r["ratio"] >= TARGET else "BELOW"
    return "\n".join([
        f"Worker step efficiency: {r['model']} {r['method']} {r['precision']} on {r['device']}"
        f" ({r['threads']} thread(s)), batch {r['batch']}, <= {r['max_input_tokens']}/"
        f"{r['max_output_tokens']} tokens, {r['steps_per_round']} steps x {r['rounds']} "
        "rounds, interleaved",
        f"{'worker step (samples/s)':>26}{'hand-written (samples/s)':>27}{'ratio':>8}",
        f"{r['worker_samples_per_second']:>26.2f}{r['hand_samples_per_second']:>27.2f}"
        f"{r['ratio']:>8.3f}  ({verdict} the {TARGET} target)",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny-s, 3 steps x 3 rounds")
    parser.add_argument("--model", default="ladder/t5-tiny-m")
    parser.add_argument("--method", default="full", choices=["full", "lora", "qlora"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16"],
                        help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-input-tokens", type=int, default=160)
    parser.add_argument("--max-output-tokens", type=int, default=96)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    precision = args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")
    kwargs: dict[str, Any] = dict(
        model=args.model, method=args.method, device=args.device, precision=precision,
        batch=args.batch, max_in=args.max_input_tokens, max_out=args.max_output_tokens,
        steps=args.steps, rounds=args.rounds,
    )
    if args.quick:
        kwargs.update(model="ladder/t5-tiny-s", steps=3, rounds=3, warmup=1)
    result = run(**kwargs)
    emit(report(result), result, args.json)
    return result


if __name__ == "__main__":
    main()
