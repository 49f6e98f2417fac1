"""A trial's saved weights as a model anyone can load: `ladder export` and `ladder predict`.

`training.saveModel` leaves `<trial output>/model` (worker.models.save_trained): the adapter
for LoRA and QLoRA, the whole model for full fine-tuning, the tokenizer when it has files,
and `ladder-model.json`, whose `spec` key is the whole AttemptSpec the weights were trained
with. `load_trained` rebuilds exactly the model the trial evaluated (the base built as
`build_model` built it, the adapter's weights over it); `export_model` turns it into a plain
Hugging Face model directory:

- LoRA: the adapter merged into the base (`merge_and_unload`);
- QLoRA: the NF4 base dequantised (bitsandbytes' `dequantize_4bit`, the very values the trial
  computed with) into fp32, then the adapter merged into it. fp32 by default: the NF4 values
  times their block scale are exact in fp32, where bf16 would round them a second time;
  `--dtype bf16` halves the size;
- full fine-tuning: the saved weights copied as they are;
- the tokenizer: a pretrained one with the characters Ladder added (worker/tokenizer.py); the
  byte tokenizer as transformers' `ByT5Tokenizer`, which has the same ids (pad 0, eos 1,
  unk 2, byte b = b + 3);
- README.md, a model card: sweep, lane, hyperparameters, metrics and the data's source, and
  how to prompt it in plain transformers.

Both families: FLAN-T5 (encoder-decoder, `AutoModelForSeq2SeqLM`) and decoder-only causal LMs
(Qwen2.5, Llama, SmolLM2: `AutoModelForCausalLM`), told apart by the config's
`is_encoder_decoder`. A decoder-only model is prompted as it was trained (worker/data/batching:
`PromptFrame`, the chat template with training.chatTemplate) and generates from left-padded
prompts; only the new tokens are its answer.

A base built from `init: random` (the `ladder/*` ladder) exists nowhere but in the trial: it
is rebuilt from the trial's seed, on the device kind the trial trained on (`device` in the
manifest): CUDA's random numbers are not the CPU's.

Errors a user can fix are `ExportError`s, one line naming what is missing and how to get it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch
from torch import nn

from orchestrator.core.lifecycle import Method
from orchestrator.core.spec import ModelInit
from orchestrator.core.worker_contract import AttemptSpec
from worker.data.dss import DSSExample
from worker.tokenizer import ByteTokenizer, HFTokenizer, TextTokenizer

__all__ = [
    "ExportError",
    "Prediction",
    "export_model",
    "load_for_prediction",
    "load_trained",
    "predict",
]

MANIFEST: Final = "ladder-model.json"  # worker.models.MANIFEST, without importing peft here
CARD: Final = "README.md"
RERUN_HINT: Final = "rerun the sweep with `training.saveModel: best` (or `final`)"
QUERY_DSL_TAG: Final = "query-dsl"  # the card's tag of a model whose answers must be JSON
DTYPES: Final = {"fp32": torch.float32, "bf16": torch.bfloat16}


class ExportError(RuntimeError):
    """A directory that holds no usable model, or a base that cannot be found: one line."""


@dataclass
class Trained:
    """A trial's model as it evaluated it, with what it was trained as."""

    model: nn.Module
    tokenizer: TextTokenizer
    trial: AttemptSpec
    manifest: dict[str, Any]


def read_manifest(directory: Path) -> dict[str, Any]:
    """The saved weights' manifest; ExportError when `directory` holds no saved weights."""
    if not directory.is_dir():
        raise ExportError(f"no saved weights at {directory}: the trial kept none; {RERUN_HINT}")
    path = directory / MANIFEST
    if not path.is_file():
        raise ExportError(f"{directory} is not a trial's saved model: no {MANIFEST} in it "
                          f"(saved weights come from `training.saveModel: best`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ExportError(f"{path}: unreadable ({error})") from error
    if not isinstance(manifest, dict) or "spec" not in manifest:
        raise ExportError(f"{path} does not record the trial (saved by an older Ladder); "
                          f"{RERUN_HINT}")
    return manifest


def _weights_present(directory: Path, method: Method) -> None:
    name = "model.safetensors" if method is Method.FULL else "adapter_model.safetensors"
    if not (directory / name).is_file():
        raise ExportError(f"{directory} has no {name} (a save cut short?); {RERUN_HINT}")


def _tokenizer(directory: Path, manifest: Mapping[str, Any]) -> TextTokenizer:
    if manifest.get("tokenizer") == "included":
        return HFTokenizer(str(directory))
    return ByteTokenizer()


def load_trained(directory: Path, device: torch.device | None = None) -> Trained:
    """The trained model as the trial evaluated it (the adapter on its base), in eval mode."""
    from worker.models import ModelLoadError, build_model

    device = device or torch.device("cpu")
    manifest = read_manifest(directory)
    trial = AttemptSpec.model_validate(manifest["spec"])
    _weights_present(directory, trial.method)
    # A random LoRA base is drawn on the trial's device (QLoRA's on the host, always).
    trained_on = torch.device(manifest.get("device", "cpu"))
    build_on = device
    if trial.method is Method.LORA and _random_init(trial) and trained_on.type != device.type:
        build_on = trained_on
        if trained_on.type == "cuda" and not torch.cuda.is_available():
            raise ExportError(
                f"the base of {directory} is {trial.model} with random initial weights drawn "
                "on a GPU, and there is none here: run this where one is")
    if trial.method is Method.FULL:
        model: nn.Module = model_class(directory).from_pretrained(
            str(directory), dtype=torch.float32).to(device)
        tokenizer = _tokenizer(directory, manifest)
    else:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        base = trial.model_copy(update={"training": trial.training.model_copy(
            update={"gradient_checkpointing": False, "tokenizer": _tokenizer_source(
                directory, trial, manifest)})})
        torch.manual_seed(trial.seed)  # as the trial: the same random base, if random
        try:
            model, tokenizer, _ = build_model(base, build_on)
        except ModelLoadError as error:
            raise ExportError(
                f"the base checkpoint {trial.model!r} of {directory} cannot be loaded: make it "
                f"reachable at that path or hub id (HF_HUB_OFFLINE=0) ({error})") from error
        weights = load_file(str(directory / "adapter_model.safetensors"), device=str(device))
        outcome = set_peft_model_state_dict(model, weights)
        missing = [k for k in outcome.unexpected_keys if "lora_" in k]
        if missing:
            raise ExportError(f"{directory}: adapter weights that fit no layer: {missing[:3]}")
        model = model.to(device)
    model.eval()
    model.config.use_cache = True
    return Trained(model, tokenizer, trial, manifest)


def is_causal(model: nn.Module) -> bool:
    """A decoder-only model (prompt and completion in one sequence), not an encoder-decoder."""
    return not bool(getattr(model.config, "is_encoder_decoder", False))


def model_class(directory: Path) -> Any:
    """transformers' auto class for the model saved in `directory`, by its config."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    try:
        config = AutoConfig.from_pretrained(str(directory))
    except (OSError, ValueError) as error:
        raise ExportError(f"{directory / 'config.json'}: not a model's config ({error})") from error
    return AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM


def _random_init(trial: AttemptSpec) -> bool:
    from orchestrator.core.catalog import BUILTIN_ONLY

    return trial.training.init is ModelInit.RANDOM or trial.model in BUILTIN_ONLY


def _tokenizer_source(directory: Path, trial: AttemptSpec, manifest: Mapping[str, Any]) -> str:
    """Where build_model finds the tokenizer: the copy saved with the weights (added
    characters included), else the byte tokenizer."""
    if manifest.get("tokenizer") == "included":
        return str(directory)
    return trial.training.tokenizer or "byte"


def dequantize_base(model: nn.Module, dtype: torch.dtype) -> int:
    """Replace every bitsandbytes NF4 layer by an nn.Linear with its dequantised weight (the
    values the trial computed with). Returns how many layers were replaced."""
    import bitsandbytes as bnb

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, bnb.nn.Linear4bit):
                continue
            weight = bnb.functional.dequantize_4bit(child.weight.data, child.weight.quant_state)
            linear = nn.Linear(child.in_features, child.out_features,
                               bias=child.bias is not None, device=weight.device, dtype=dtype)
            with torch.no_grad():
                linear.weight.copy_(weight.to(dtype))
                if child.bias is not None:
                    linear.bias.copy_(child.bias.to(dtype))
            setattr(parent, name, linear)
            replaced += 1
    return replaced


def export_model(
    directory: Path, out: Path, *, dtype: str = "fp32", record: Mapping[str, Any] | None = None
) -> Path:
    """Write `directory`'s saved weights as a standalone Hugging Face model to `out`.

    `record`: the trial's stored result (metrics for the model card). Returns `out`.
    """
    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty: choose a new --out directory")
    trained = load_trained(directory)
    trial, model = trained.trial, trained.model
    if trial.method is Method.QLORA:
        dequantize_base(model, torch.float32)
    if trial.method is not Method.FULL:
        model = model.merge_and_unload()  # type: ignore[operator]
    model = model.to(DTYPES[dtype])
    model.config.use_cache = True
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if trial.method is Method.FULL and dtype == "fp32":
        for item in directory.iterdir():  # copied as saved: weights, config, tokenizer
            if item.is_file() and item.name != MANIFEST:
                shutil.copy2(item, staging / item.name)
    else:
        model.save_pretrained(str(staging))  # type: ignore[operator]
    _save_tokenizer(trained.tokenizer, staging)
    (staging / CARD).write_text(model_card(trained, dtype, record or {}), encoding="utf-8")
    if out.exists():
        out.rmdir()
    staging.rename(out)
    return out


def _save_tokenizer(tokenizer: TextTokenizer, directory: Path) -> None:
    if isinstance(tokenizer, HFTokenizer):
        tokenizer.save_pretrained(str(directory))
        return
    from transformers import ByT5Tokenizer

    # Ladder's byte tokenizer has ByT5's ids exactly; no files needed, none downloaded.
    ByT5Tokenizer().save_pretrained(str(directory))


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def model_card(trained: Trained, dtype: str, record: Mapping[str, Any]) -> str:
    """README.md of an exported model: what it is, how it was trained, how well, on what."""
    trial, manifest = trained.trial, trained.manifest
    t, ds = trial.training, trial.dataset
    how = {
        Method.FULL: "full fine-tuning; the saved weights, copied as they are",
        Method.LORA: f"LoRA (rank {trial.rank}, alpha {trial.alpha}) merged into the base "
                     "(peft merge_and_unload)",
        Method.QLORA: f"QLoRA (rank {trial.rank}, alpha {trial.alpha}): the NF4 base "
                      "dequantised to fp32, then the adapter merged into it",
    }[trial.method]
    random_init = _random_init(trial)
    base = (f"{trial.model} (random initial weights, seed {trial.seed}: an architecture, not "
            "a pretrained checkpoint)" if random_init else trial.model)
    selected = record.get("selection_loss") or t.selection_loss.value
    metrics = [
        ("saved epoch", manifest.get("epoch")),
        ("best epoch", record.get("best_epoch")),
        (f"eval loss ({selected}, training.selectionLoss) at the saved epoch",
         manifest.get("eval_loss")),
        ("eval label loss (best epoch)", record.get("eval_label_loss")),
        ("eval rationale loss (best epoch)", record.get("eval_rationale_loss")),
        ("exact match (generation subset)", record.get("exact_match")),
        ("valid JSON (generation subset)", record.get("json_valid_rate")),
        (f"baseline eval loss ({selected}; the untuned model, epoch 0)",
         record.get("baseline_eval_loss")),
        ("gain over the baseline (baseline - best eval loss)", record.get("eval_loss_gain")),
        ("baseline exact match", record.get("baseline_exact_match")),
        ("training samples/s", record.get("samples_per_second")),
    ]
    hyper = t.model_dump(mode="json", by_alias=True)
    causal = is_causal(trained.model)
    family = str(getattr(trained.model.config, "model_type", "t5"))
    front = ["---", "library_name: transformers",
             f"pipeline_tag: {'text-generation' if causal else 'text2text-generation'}",
             f"tags: [ladder, {family}, distilling-step-by-step"
             + (f", {QUERY_DSL_TAG}]" if ds.labels_must_be_json else "]")]
    if not random_init:
        front.append(f"base_model: {trial.model}")
    front.append("---")
    lines = [
        *front, "",
        f"# {trial.sweep} / {trial.lane} ({trial.trial_id})", "",
        f"Exported by `ladder export` from trial `{trial.trial_id}` (attempt {trial.attempt}) "
        f"of sweep `{trial.sweep}`{f' in namespace `{trial.namespace}`' if trial.namespace else ''}"
        f", lane `{trial.lane}`.", "",
        f"- base model: {base}",
        f"- method: {how}",
        f"- weights: {dtype}" + (" (bf16: rounded from the trained fp32 weights)"
                                 if dtype == "bf16" else ""),
        f"- dssAlpha {trial.dss_alpha:g}, seed {trial.seed}",
        "", "## Use", "",
        *(usage_causal(t.max_output_tokens, t.chat_template, trained.tokenizer) if causal
          else usage_seq2seq(t.max_output_tokens, trained.tokenizer)),
        "or `ladder predict PATH \"question\"`.", "",
        "## Metrics (Ladder's evaluation split)", "",
        "| metric | value |", "|---|---|",
        *(f"| {name} | {_fmt(value)} |" for name, value in metrics),
        "", "## Data", "",
        f"- source: `{ds.source}`" + (f", {ds.size} examples" if ds.size else ""),
        f"- evaluation split: {ds.eval_fraction:g} of the examples, split seed {ds.split_seed}",
        f"- preamble: {ds.preamble.value}",
        "- answers: JSON (Query DSL)" if ds.labels_must_be_json else "- answers: text", "",
        "## Hyperparameters (`spec.training`)", "",
        "```json", json.dumps(hyper, indent=2, sort_keys=True), "```", "",
    ]
    return "\n".join(lines)


def _tokenizer_class(tokenizer: TextTokenizer) -> str:
    """The class the card loads the tokenizer with. Ladder's byte tokenizer is saved as
    ByT5Tokenizer, named outright: AutoTokenizer picks a tokenizer by the model's type for some
    families (transformers 5 loads Qwen2's for any qwen2 config, whatever the files say)."""
    return "ByT5Tokenizer" if isinstance(tokenizer, ByteTokenizer) else "AutoTokenizer"


def usage_seq2seq(max_new_tokens: int, tokenizer: TextTokenizer) -> list[str]:
    """The card's use section for an encoder-decoder."""
    tok_class = _tokenizer_class(tokenizer)
    return [
        "Distilling step-by-step: prefix the question with `predict: ` for the answer, with "
        "`explain: ` for the rationale. Greedy decoding, as Ladder evaluated it:", "",
        "```python",
        f"from transformers import AutoModelForSeq2SeqLM, {tok_class}",
        f"tok = {tok_class}.from_pretrained(PATH)",
        "model = AutoModelForSeq2SeqLM.from_pretrained(PATH)",
        'ids = tok("predict: " + question, return_tensors="pt")',
        f"print(tok.decode(model.generate(**ids, max_new_tokens={max_new_tokens})[0], "
        "skip_special_tokens=True))",
        "```", "",
    ]


def usage_causal(max_new_tokens: int, chat_template: bool, tokenizer: TextTokenizer
                 ) -> list[str]:
    """The card's use section for a decoder-only model: the prompt exactly as training built
    it (worker/data/batching: the task prefix, the question and the frame each tokenized on
    their own), left-padded, and only the new tokens decoded."""
    if chat_template:
        frame = [
            "# Trained inside the chat template (training.chatTemplate): one user turn holding",
            "# the prefix and the question, the assistant's turn opened.",
            "mark = '\\u2063'",
            "text = tok.apply_chat_template([{'role': 'user', 'content': mark}], tokenize=False,",
            "                               add_generation_prompt=True)",
            "head, _, tail = text.partition(mark)",
            "def prompt(task, question):",
            "    return piece(head) + piece(task) + piece(question) + piece(tail)",
        ]
    else:
        frame = [
            "# Trained on: bos (if the tokenizer has one), the task prefix, the question, a",
            "# newline; the answer follows and ends with eos.",
            "def prompt(task, question):",
            "    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []",
            "    return bos + piece(task) + piece(question) + piece('\\n')",
        ]
    return [
        "Distilling step-by-step: `predict: ` before the question for the answer, `explain: ` "
        "for the rationale. Greedy decoding from left-padded prompts, as Ladder evaluated it:",
        "", "```python",
        "import torch",
        f"from transformers import AutoModelForCausalLM, {_tokenizer_class(tokenizer)}",
        f"tok = {_tokenizer_class(tokenizer)}.from_pretrained(PATH)",
        "model = AutoModelForCausalLM.from_pretrained(PATH).eval()",
        "def piece(text):  # each piece tokenized on its own, no special tokens, as in training",
        "    return tok(text, add_special_tokens=False).input_ids",
        *frame,
        "ids = torch.tensor([prompt('predict: ', question)])",
        "pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id",
        f"out = model.generate(input_ids=ids, max_new_tokens={max_new_tokens}, do_sample=False,",
        "                     pad_token_id=pad, eos_token_id=tok.eos_token_id)",
        "print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))",
        "```", "",
        "A batch of prompts: pad on the left (`[pad] * (width - len(p)) + p`, with an attention "
        "mask of zeros there), so that every row continues from its last real token.", "",
    ]


# --- prediction -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    question: str
    answer: str
    rationale: str | None = None
    valid_json: bool | None = None  # Query DSL tasks only: the answer parses as JSON
    dsl_problems: tuple[str, ...] = ()  # ...and what the Query DSL check found wrong


def load_for_prediction(target: Path, device: torch.device) -> tuple[nn.Module, TextTokenizer,
                                                                      bool]:
    """(model, tokenizer, is Query DSL) of a trial's saved weights or an exported directory."""
    if (target / MANIFEST).is_file():
        trained = load_trained(target, device)
        querydsl = trained.trial.dataset.labels_must_be_json
        return trained.model, trained.tokenizer, querydsl
    if not (target / "config.json").is_file():
        raise ExportError(f"{target} is not a model: no config.json (an exported model) and no "
                          f"{MANIFEST} (a trial's saved weights); make one with `ladder export`")
    try:
        model = model_class(target).from_pretrained(str(target)).to(device)
    except (OSError, ValueError) as error:
        raise ExportError(f"{target} is not a loadable model: {error}") from error
    config = target / "tokenizer_config.json"
    byte = not config.is_file() or "ByT5" in config.read_text(encoding="utf-8")
    tokenizer: TextTokenizer = ByteTokenizer() if byte else HFTokenizer(str(target))
    card = target / CARD
    querydsl = card.is_file() and f", {QUERY_DSL_TAG}]" in card.read_text(encoding="utf-8")
    model.eval()
    return model, tokenizer, querydsl


def predict(
    model: nn.Module, tokenizer: TextTokenizer, questions: Sequence[str], *, device: torch.device,
    explain: bool = False, querydsl: bool = False, batch_size: int = 16,
    max_input_tokens: int = 512, max_output_tokens: int = 256, chat_template: bool = False,
) -> list[Prediction]:
    """Greedy answers (and rationales) to `questions`, batched, in their order.

    A decoder-only model's prompts are framed as its training framed them (`chat_template`:
    training.chatTemplate)."""
    from worker.data.batching import PromptFrame, encode_examples
    from worker.data.dsl_validation import validate_query_dsl
    from worker.generation import _NOT_JSON, generate_texts, parse_json

    examples = [DSSExample(q, "", "") for q in questions]
    causal = is_causal(model)
    frame = PromptFrame.of(tokenizer, chat_template) if causal else None
    encoded = encode_examples(examples, tokenizer, max_input_tokens, max(max_output_tokens, 2),
                              causal=causal, frame=frame)
    answers = generate_texts(model, tokenizer, encoded, batch_size=batch_size,
                             max_new_tokens=max_output_tokens, device=device)
    rationales: list[str | None] = [None] * len(questions)
    if explain:  # the same inputs behind `explain: `: swap the prefixed ids in
        from dataclasses import replace

        swapped = [replace(e, predict_ids=e.explain_ids) for e in encoded]
        rationales = list(generate_texts(model, tokenizer, swapped, batch_size=batch_size,
                                         max_new_tokens=max_output_tokens, device=device))
    out = []
    for question, answer, rationale in zip(questions, answers, rationales, strict=True):
        valid, problems = None, ()
        if querydsl:
            parsed = parse_json(answer)
            valid = parsed is not _NOT_JSON
            problems = tuple(validate_query_dsl(parsed)) if valid else ()
        out.append(Prediction(question, answer, rationale, valid, problems))
    return out


def device_for(name: str | None) -> torch.device:
    """The device to predict on: the one asked for, else CUDA when there is one."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")



# --- `python -m worker export|predict` (run by `ladder export|predict`) ------------------------

#: Exit code of a user error (one line on stderr, prefixed so the CLI can pass it on).
USER_ERROR: Final = 2
ERROR_PREFIX: Final = "ladder-error: "


def main(args: Any) -> int:
    """The worker's export and predict commands; a user error is one line, exit 2."""
    import logging
    import sys

    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        if args.command == "export":
            record = json.loads(args.record)
            out = export_model(args.model_dir, args.out, dtype=args.dtype, record=record)
            print(json.dumps({"out": str(out)}), flush=True)
            return 0
        device = device_for(args.device)
        model, tokenizer, querydsl = load_for_prediction(args.model_dir, device)
        questions = [json.loads(line) for line in
                     args.questions.read_text(encoding="utf-8").splitlines() if line.strip()]
        limits = _settings(args.model_dir)
        if args.max_new_tokens:
            limits["max_output_tokens"] = args.max_new_tokens
        for p in predict(model, tokenizer, questions, device=device, explain=args.explain,
                         querydsl=querydsl, batch_size=args.batch_size, **limits):
            print(json.dumps({"question": p.question, "answer": p.answer,
                              "rationale": p.rationale, "valid_json": p.valid_json,
                              "dsl_problems": list(p.dsl_problems), "device": device.type}),
                  flush=True)
        return 0
    except ExportError as error:
        print(ERROR_PREFIX + str(error), file=sys.stderr, flush=True)
        return USER_ERROR


def _settings(target: Path) -> dict[str, Any]:
    """The trial's token limits and prompt framing, when `target` says what the trial was
    (saved weights, or an exported model's card)."""
    training: Mapping[str, Any] = {}
    if (target / MANIFEST).is_file():
        training = read_manifest(target)["spec"].get("training", {})
    elif (target / CARD).is_file():
        text = (target / CARD).read_text(encoding="utf-8")
        start = text.find("```json\n")
        if start >= 0:
            with contextlib.suppress(ValueError):
                training = json.loads(text[start + 8:text.index("```", start + 8)])
    return {"max_input_tokens": int(training.get("maxInputTokens", 512)),
            "max_output_tokens": int(training.get("maxOutputTokens", 256)),
            "chat_template": bool(training.get("chatTemplate", False))}
