"""Benchmark: the FLAN-T5 ladder, then Qwen2.5 0.5B and 1.5B, x full/LoRA/QLoRA on one GPU,
at the paper's lengths.

    python tests/bench/gpu_ladder.py                       # on a GPU machine (H100 80 GB)
    python tests/bench/gpu_ladder.py --dry [--quick]       # CPU, tiny lengths (CI)

For every (model, method), in a subprocess of its own (so an OOM, or a leaked CUDA context,
never touches the next): the model at random init (orchestrator.core.catalog's real FLAN-T5
architectures; nothing downloaded), built by `worker.models.build_model`, trained with the
worker's step (Accelerate bf16 autocast, `worker.train.dss_forward`, fused AdamW) on a batch
padded to exactly 1400 input and 1024 output tokens (the probe step's worst case), for warm-up
steps and then timed steps. Recorded per point: samples/s, peak memory from NVML (sampled by
`worker.telemetry.Sampler`) and torch (`max_memory_allocated`/`max_memory_reserved`), MFU
against the card's dense bf16 peak (H100 SXM: 989 TFLOP/s) with FLOPs per sample from
`orchestrator.core.estimate.flops_per_sample`, and the memory estimator's error against the
measured peak. The batch per device is the largest of 16, 8, 4, 2, 1 that the estimator puts
under 90% of the card (`--batch N` fixes it); a point that runs out of memory is tried again
at batch 1, so "fits 80 GB" means "trains at batch 1 with both DSS tasks". Output: JSON and a
Markdown table (bench-results/gpu_ladder.{json,md} unless --out says otherwise).

`--dry` runs the same code on CPU in fp32 with tiny lengths (32/16 tokens, batch 2, 2 steps)
over the ladder/t5-tiny-* architectures and ladder/qwen-tiny-s (the real ones need up to 45 GB
of host memory for XL full fine-tuning): it checks that the benchmark works, and measures
nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from orchestrator.core.catalog import architecture  # noqa: E402
from orchestrator.core.estimate import estimate_memory, flops_per_sample  # noqa: E402
from orchestrator.core.lifecycle import Method  # noqa: E402
from orchestrator.core.spec import PAPER_LADDER, Precision, parse_quantity  # noqa: E402

GiB = 2**30
TINY_LADDER = ("ladder/t5-tiny-s", "ladder/t5-tiny-m", "ladder/t5-tiny-l")
# Decoder-only points after the paper's ladder (issue 16): the two smallest Qwen2.5 rungs, at
# the same lengths (prompt 1400 + completion 1024 tokens in one sequence, the prompt masked).
QWEN_POINTS = ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-1.5B")
TINY_DECODER = ("ladder/qwen-tiny-s",)
# Dense bf16 peak TFLOP/s by device name, most specific first: torch names the SXM H100
# "NVIDIA H100 80GB HBM3", so a plain "H100" must not catch the NVL or PCIe cards.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H200 NVL", 835.0),
    ("GH200", 989.0),
    ("H200", 989.0),  # the SXM H100's compute with more memory
    ("H100", 989.0),  # SXM
    ("A100", 312.0),
)


def peak_tflops_for(name: str) -> float | None:
    """The dense bf16 peak of a device by its name; None for a card not in the table."""
    return next((value for key, value in PEAK_TFLOPS if key in name), None)
DEFAULT_OUT = ROOT / "bench-results"


# --- one point, in its own process ----------------------------------------------------------


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Build, warm up and time one (model, method) point; raises on any failure."""
    import torch
    from accelerate import Accelerator

    from orchestrator.core.spec import Training
    from orchestrator.core.worker_contract import AttemptSpec
    from worker.models import build_model
    from worker.telemetry import Sampler
    from worker.train import dss_forward

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    precision = Precision.BF16 if cuda else Precision.FP32
    method = Method(args.method)
    rank = args.rank if method.uses_adapters else None
    trial = AttemptSpec(
        sweep="gpu-ladder", trial_id="point", lane="bench", model=args.model, method=method,
        rank=rank, alpha=2 * rank if rank else None,
        training=Training(precision=precision, init="random", batch_size=args.batch,
                          max_input_tokens=args.input_tokens,
                          max_output_tokens=args.output_tokens),
    )
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)
    accelerator = Accelerator(mixed_precision="bf16" if cuda else "no", cpu=not cuda)
    arch = architecture(args.model)
    assert arch is not None
    with Sampler(device, interval=0.1) as sampler:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        model, _, info = build_model(trial, device)
        build_seconds = time.perf_counter() - t0
        attention = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa")
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                      lr=1e-5, fused=cuda)
        model, optimizer = accelerator.prepare(model, optimizer)
        model.train()
        b, li, lo = args.batch, args.input_tokens, args.output_tokens

        def ids(length: int) -> torch.Tensor:
            return torch.randint(2, arch.vocab_size, (b, length), device=device)

        ones = torch.ones(b, li, dtype=torch.long, device=device)
        batch = {"predict_input_ids": ids(li), "predict_attention_mask": ones,
                 "labels": ids(lo), "explain_input_ids": ids(li),
                 "explain_attention_mask": ones, "rationale_labels": ids(lo)}
        if arch.causal:  # decoder-only: prompt + completion in one sequence, prompt masked
            sequence = ids(li + lo)
            labels = sequence.clone()
            labels[:, :li] = -100
            mask = torch.ones_like(sequence)
            batch = {"predict_input_ids": sequence, "predict_attention_mask": mask,
                     "labels": labels, "explain_input_ids": sequence,
                     "explain_attention_mask": mask, "rationale_labels": labels}

        def step() -> None:
            with accelerator.autocast():
                loss, _, _ = dss_forward(model, batch, 0.5)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def sync() -> None:
            if cuda:
                torch.cuda.synchronize(device)

        for _ in range(args.warmup):
            step()
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        seconds = time.perf_counter() - start
        sampler.sample()
        snapshot = sampler.snapshot()

    samples_per_second = b * args.steps / seconds
    flops = flops_per_sample(arch, method, li, lo, rank=rank)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    estimate = estimate_memory(arch, method, rank=rank, batch_per_device=b, input_tokens=li,
                               output_tokens=lo, precision=precision,
                               attention="eager" if attention == "eager" else "sdpa")
    nvml = max(snapshot.gpu_peak_bytes.values()) if snapshot.gpu_peak_bytes else None
    reserved = snapshot.torch_reserved_bytes
    measured = nvml or (reserved + estimate.overhead_bytes if reserved else None)
    return {
        "status": "ok",
        "samples_per_second": samples_per_second,
        "step_seconds": seconds / args.steps,
        "build_seconds": build_seconds,
        "tflops_per_sample": flops / 1e12,
        "achieved_tflops": flops * samples_per_second / 1e12,
        "mfu": flops * samples_per_second / peak if cuda and peak else None,
        "nvml_peak_bytes": nvml,
        "torch_max_allocated_bytes": snapshot.torch_allocated_bytes,
        "torch_max_reserved_bytes": reserved,
        "host_peak_rss_bytes": snapshot.peak_rss_bytes,
        "estimate_bytes": estimate.total_bytes,
        "estimate_breakdown": estimate.breakdown(),
        "estimate_error": (estimate.total_bytes - measured) / measured if measured else None,
        "attention": attention,
        "trainable_parameters": info.trainable_parameters,
        "total_parameters": info.total_parameters,
    }


def child_main(args: argparse.Namespace) -> int:
    try:
        result = measure(args)
    except Exception as error:
        import torch

        oom = isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()
        result = {"status": "oom" if oom else "error", "error": f"{type(error).__name__}: "
                  f"{str(error)[:500]}"}
    Path(args.result).write_text(json.dumps(result), encoding="utf-8")
    return 0


# --- the driver -----------------------------------------------------------------------------


def auto_batch(model: str, method: Method, args: argparse.Namespace, device_bytes: int) -> int:
    arch = architecture(model)
    assert arch is not None
    precision = Precision.FP32 if args.dry else Precision.BF16
    for batch in (16, 8, 4, 2):
        e = estimate_memory(arch, method, rank=args.rank if method.uses_adapters else None,
                            batch_per_device=batch, input_tokens=args.input_tokens,
                            output_tokens=args.output_tokens, precision=precision)
        if e.total_bytes <= 0.9 * device_bytes:
            return batch
    return 1


def run_point(model: str, method: Method, batch: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="gpu-ladder-") as tmp:
        result_file = Path(tmp) / "result.json"
        command = [
            sys.executable, str(Path(__file__).resolve()), "--child", "--model", model,
            "--method", method.value, "--batch", str(batch), "--rank", str(args.rank),
            "--input-tokens", str(args.input_tokens), "--output-tokens",
            str(args.output_tokens), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--device", args.device, "--peak-tflops", str(args.peak_tflops or 0),
            "--result", str(result_file),
        ]
        started = time.monotonic()
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                  timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "batch_per_device": batch}
        wall = time.monotonic() - started
        if result_file.exists():
            result = json.loads(result_file.read_text(encoding="utf-8"))
        else:  # killed (host OOM, a crash in a CUDA library)
            result = {"status": "error", "error": f"exit {done.returncode}: "
                      f"{done.stderr[-500:]}"}
    result.update(batch_per_device=batch, wall_seconds=wall)
    return result


def device_info(args: argparse.Namespace) -> dict[str, Any]:
    if args.dry:
        return {"name": "cpu (dry run)", "memory_bytes": parse_quantity(args.device_memory)}
    done = subprocess.run(
        [sys.executable, "-c", "import torch; p = torch.cuda.get_device_properties(0); "
         "print(p.name); print(p.total_memory)"], capture_output=True, text=True, timeout=120)
    name, memory = done.stdout.strip().splitlines()[-2:]
    return {"name": name, "memory_bytes": int(memory)}


def markdown(data: dict[str, Any]) -> str:
    dry = " - DRY RUN (CPU): not GPU figures" if data["dry"] else ""
    lines = [
        f"GPU ladder on {data['device']['name']} ({data['device']['memory_bytes'] / GiB:.0f} "
        f"GiB), {data['input_tokens']}/{data['output_tokens']} tokens, both DSS tasks, "
        f"peak {data['peak_tflops'] or 0:.0f} TFLOP/s{dry}",
        "",
        "| model | method | batch/device | status | samples/s | MFU | NVML peak GiB | torch "
        "alloc / reserved GiB | estimate GiB | estimate error | fits at batch 1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def gib(v: Any) -> str:
        return f"{v / GiB:.1f}" if v else "-"

    for r in data["results"]:
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        sps = f"{r['samples_per_second']:.2f}" if r.get("samples_per_second") else "-"
        err = f"{r['estimate_error']:+.0%}" if r.get("estimate_error") is not None else "-"
        lines.append(
            f"| {r['model']} | {r['method']} | {r['batch_per_device']} | {r['status']} | {sps} "
            f"| {mfu} | {gib(r.get('nvml_peak_bytes'))} | "
            f"{gib(r.get('torch_max_allocated_bytes'))} / {gib(r.get('torch_max_reserved_bytes'))}"
            f" | {gib(r.get('estimate_bytes'))} | {err} | {r['fits_at_batch_1']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="CPU, tiny lengths, tiny models")
    parser.add_argument("--quick", action="store_true", help="with --dry: one model")
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", default=[m.value for m in Method])
    parser.add_argument("--batch", default="auto", help="'auto' or a number")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--input-tokens", type=int, default=None)
    parser.add_argument("--output-tokens", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--device-memory", default="80Gi",
                        help="for the auto batch (dry runs); a GPU reports its own")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="dense bf16 peak; default from the device name (PEAK_TFLOPS)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.batch = int(args.batch)
        sys.exit(child_main(args))

    dry = args.dry
    args.device = args.device or ("cpu" if dry else "cuda")
    args.input_tokens = args.input_tokens or (32 if dry else 1400)
    args.output_tokens = args.output_tokens or (16 if dry else 1024)
    args.steps = args.steps or (2 if dry else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if dry else 2)
    if dry and args.rank == 64:
        args.rank = 8
    models = args.models or (list(TINY_LADDER[:1] if args.quick else TINY_LADDER + TINY_DECODER)
                             if dry else [*PAPER_LADDER, *QWEN_POINTS])
    device = device_info(args)
    if args.peak_tflops is None:
        args.peak_tflops = peak_tflops_for(device["name"])
        if args.peak_tflops is None and not dry:
            print(f"no peak TFLOP/s known for {device['name']}: MFU left out "
                  "(--peak-tflops sets it)", flush=True)
    results = []
    for model in models:
        for method in (Method(m) for m in args.methods):
            batch = (2 if dry else auto_batch(model, method, args, device["memory_bytes"])
                     ) if args.batch == "auto" else int(args.batch)
            result = run_point(model, method, batch, args)
            fits = result["status"] == "ok"
            if result["status"] == "oom" and batch > 1:
                fits = run_point(model, method, 1, args)["status"] == "ok"
            result.update(model=model, method=method.value, fits_at_batch_1=fits)
            results.append(result)
            print(f"{model} {method.value} batch {batch}: {result['status']}"
                  + (f", {result['samples_per_second']:.2f} samples/s"
                     if result.get("samples_per_second") else ""), flush=True)
    data = {
        "dry": dry, "device": device, "peak_tflops": args.peak_tflops,
        "input_tokens": args.input_tokens, "output_tokens": args.output_tokens,
        "steps": args.steps, "warmup": args.warmup, "rank": args.rank,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "gpu_ladder_dry" if dry else "gpu_ladder"
    (args.out / f"{stem}.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    table = markdown(data)
    (args.out / f"{stem}.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return data


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
