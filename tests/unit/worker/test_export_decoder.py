"""`ladder export` and `ladder predict` for decoder-only models (Qwen2- and Llama-shaped).

The round trip for LoRA, QLoRA and full fine-tuning on the tiny decoder ladder: the trained
model is saved as a trial saves it, exported, and then
- `ladder predict` answers the same from the trial's saved weights and from the export;
- the model card's own Python snippet, run verbatim by plain transformers in a subprocess that
  never imports Ladder, generates exactly the tokens the trained model generates from the
  prompt Ladder trained it on (plain frame, and the chat template with
  training.chatTemplate).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from orchestrator.core.worker_contract import AttemptSpec
from tests.unit.worker.helpers import save_chat_tokenizer, save_moved_model
from worker.data.batching import PromptFrame, encode_examples
from worker.data.dss import DSSExample
from worker.export import export_model, load_for_prediction, load_trained, predict
from worker.tokenizer import TextTokenizer

QUESTIONS = ["how many orders last week", "top 5 products"]
NEW_TOKENS = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def spec(model: str, method: str, **training: object) -> AttemptSpec:
    adapters = method != "full"
    return AttemptSpec(
        sweep="s", trial_id=f"t-{method}", lane=f"{method}-lane", model=model,
        method=method, rank=4 if adapters else None, alpha=8 if adapters else None, seed=5,
        training={"init": "random", "precision": "fp32", "maxOutputTokens": NEW_TOKENS,
                  "saveModel": "best", **training},
        dataset={"source": "builtin:querydsl", "size": 20},
    )


def trained(trial: AttemptSpec, directory: Path) -> tuple[torch.nn.Module, TextTokenizer]:
    return save_moved_model(trial, directory, 0.2)


def new_tokens(model: torch.nn.Module, tokenizer: TextTokenizer, chat: bool) -> list[list[int]]:
    """Greedy new tokens from the prompt Ladder trains on (the frame, prefix and question)."""
    frame = PromptFrame.of(tokenizer, chat)
    rows = []
    with torch.no_grad():
        for q in QUESTIONS:
            (enc,) = encode_examples([DSSExample(q, "", "")], tokenizer, 256, NEW_TOKENS,
                                     causal=True, frame=frame)
            ids = torch.tensor([enc.predict_ids])
            out = model.generate(input_ids=ids, max_new_tokens=NEW_TOKENS, do_sample=False,
                                 num_beams=1, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
            rows.append(out[0, ids.shape[1]:].tolist())
    return rows


def run_card_snippet(exported: Path) -> dict[str, object]:
    """The card's ```python block, verbatim, once per question, in plain transformers."""
    card = (exported / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    script = (
        "import json, sys\nimport torch\ntorch.set_num_threads(1)\nPATH = sys.argv[1]\n"
        "rows = []\nfor question in json.loads(sys.stdin.read()):\n"
        + textwrap.indent(code, "    ")
        + "    rows.append(out[0, ids.shape[1]:].tolist())\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('orchestrator', 'worker'))\n"
        "print('RESULT ' + json.dumps({'rows': rows, 'ladder_modules': leaked}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", script, str(exported)], input=json.dumps(QUESTIONS),
        capture_output=True, text=True, timeout=300, cwd="/",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def answers(target: Path) -> list[str]:
    model, tok, _ = load_for_prediction(target, torch.device("cpu"))
    from worker.export import _settings

    settings = _settings(target)
    return [p.answer for p in predict(model, tok, QUESTIONS, device=torch.device("cpu"),
                                      batch_size=2, **settings)]


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_round_trip_in_plain_transformers(tmp_path: Path, method: str) -> None:
    trial = spec("ladder/qwen-tiny-s", method)
    model, tokenizer = trained(trial, tmp_path / "model")
    reference = new_tokens(model, tokenizer, chat=False)
    assert any(len(ids) > 1 for ids in reference)  # not just eos
    # The rebuilt adapter-on-base model is the trained one, exactly.
    rebuilt = load_trained(tmp_path / "model").model
    ids = torch.tensor([tokenizer.encode(QUESTIONS[0], 32)])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(input_ids=ids).logits, model(input_ids=ids).logits)

    out = export_model(tmp_path / "model", tmp_path / "export", record={"best_epoch": 2})
    assert (out / "model.safetensors").is_file()
    assert not (out / "adapter_model.safetensors").exists()  # merged, not an adapter
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "tags: [ladder, qwen2," in card
    assert "AutoModelForCausalLM" in card and "AutoModelForSeq2SeqLM" not in card

    plain = run_card_snippet(out)
    assert plain["ladder_modules"] == []
    assert plain["rows"] == reference
    # `ladder predict` answers the same from the trial's weights and from the export, batched
    # (left padding) as one by one.
    from_trial = answers(tmp_path / "model")
    assert answers(out) == from_trial
    assert from_trial == [tokenizer.decode(ids) for ids in reference]


def test_chat_template_prompts_survive_the_export(tmp_path: Path) -> None:
    tokenizer_dir = save_chat_tokenizer(tmp_path / "tok")
    trial = spec("ladder/llama-tiny-s", "lora", tokenizer=str(tokenizer_dir), chatTemplate=True)
    model, tokenizer = trained(trial, tmp_path / "model")
    reference = new_tokens(model, tokenizer, chat=True)
    assert reference != new_tokens(model, tokenizer, chat=False)  # the frame matters

    out = export_model(tmp_path / "model", tmp_path / "export")
    card = (out / "README.md").read_text()
    assert "apply_chat_template" in card and "tags: [ladder, llama," in card
    plain = run_card_snippet(out)
    assert plain["rows"] == reference
    assert answers(out) == answers(tmp_path / "model") == [tokenizer.decode(ids)
                                                           for ids in reference]
