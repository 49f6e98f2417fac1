"""`ladder export`'s worker side: a trial's saved weights as a plain Hugging Face model.

The round trip, for LoRA, QLoRA and full fine-tuning on the tiny ladder: the trained model is
saved as a trial saves it (save_trained, with the manifest train.py writes), exported, and
loaded by plain transformers in a subprocess that never imports Ladder; its greedy generations
must equal those of the adapter on its base, token for token.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orchestrator.core.worker_contract import AttemptSpec
from tests.unit.worker.helpers import save_moved_model
from worker.export import ExportError, export_model, load_for_prediction, load_trained, predict
from worker.tokenizer import ByteTokenizer, TextTokenizer

QUESTIONS = ["how many orders last week", "top 5 products"]
NEW_TOKENS = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def spec(method: str, **training: object) -> AttemptSpec:
    adapters = method != "full"
    return AttemptSpec(
        sweep="s", trial_id=f"t-{method}", lane=f"{method}-lane", model="ladder/t5-tiny-s",
        method=method, rank=4 if adapters else None, alpha=8 if adapters else None, seed=3,
        training={"init": "random", "precision": "fp32", "maxOutputTokens": 24,
                  "saveModel": "best", **training},
        dataset={"source": "builtin:querydsl", "size": 20},
    )


def trained(trial: AttemptSpec, directory: Path) -> tuple[torch.nn.Module, TextTokenizer]:
    return save_moved_model(trial, directory, 0.05)


def greedy_ids(model: torch.nn.Module, tokenizer: TextTokenizer) -> list[list[int]]:
    prefix = tokenizer.encode("predict: ", 64)[:-1]
    out = []
    with torch.no_grad():
        for q in QUESTIONS:
            ids = torch.tensor([prefix + tokenizer.encode(q, 64)])
            generated = model.generate(input_ids=ids, max_new_tokens=NEW_TOKENS, do_sample=False,
                                       num_beams=1)
            out.append(generated[0].tolist())
    return out


def plain_transformers(paths: list[Path]) -> dict[str, object]:
    script = (
        "import json, sys\nimport torch\ntorch.set_num_threads(1)\n"
        "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n"
        "questions = json.loads(sys.stdin.read())\nout = {}\n"
        "for path in sys.argv[1:]:\n"
        "    tok = AutoTokenizer.from_pretrained(path)\n"
        "    model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()\n"
        "    rows = []\n"
        "    for q in questions:\n"
        "        ids = tok('predict: ' + q, return_tensors='pt')\n"
        "        with torch.no_grad():\n"
        f"            rows.append(model.generate(**ids, max_new_tokens={NEW_TOKENS}, "
        "do_sample=False, num_beams=1)[0].tolist())\n"
        "    out[path] = rows\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('orchestrator', 'worker'))\n"
        "print(json.dumps({'generations': out, 'ladder_modules': leaked}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", script, *map(str, paths)], input=json.dumps(QUESTIONS),
        capture_output=True, text=True, timeout=300, cwd="/",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_round_trip_lora_qlora_full_in_plain_transformers(tmp_path: Path) -> None:
    expected, exported = {}, []
    for method in ("lora", "qlora", "full"):
        trial = spec(method)
        model, tokenizer = trained(trial, tmp_path / method / "model")
        reference = greedy_ids(model, tokenizer)
        # The rebuilt adapter-on-base model is the trained one, exactly.
        rebuilt = load_trained(tmp_path / method / "model").model
        ids = torch.tensor([ByteTokenizer().encode(QUESTIONS[0], 32)])
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(input_ids=ids, decoder_input_ids=ids).logits,
                                       model(input_ids=ids, decoder_input_ids=ids).logits)
        out = export_model(tmp_path / method / "model", tmp_path / method / "export",
                           record={"best_epoch": 2, "exact_match": 0.5})
        assert not (out / "ladder-model.json").exists()
        assert not (out / "adapter_model.safetensors").exists()  # merged, not an adapter
        assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
        card = (out / "README.md").read_text()
        assert "s / " + trial.lane in card and "builtin:querydsl" in card
        assert '"learningRate"' in card and "| exact match (generation subset) | 0.5 |" in card
        expected[str(out)] = reference
        exported.append(out)
    assert "dequantised to fp32" in (tmp_path / "qlora" / "export" / "README.md").read_text()
    assert any(len(ids) > 2 for rows in expected.values() for ids in rows)  # not just eos

    plain = plain_transformers(exported)
    assert plain["ladder_modules"] == []
    assert plain["generations"] == expected


def test_predict_batched_matches_one_by_one_and_marks_json(tmp_path: Path) -> None:
    trial = spec("lora")
    model, tokenizer = trained(trial, tmp_path / "model")
    loaded, tok, querydsl = load_for_prediction(tmp_path / "model", torch.device("cpu"))
    assert querydsl  # the built-in Query DSL data set: labels must be JSON
    batched = predict(loaded, tok, QUESTIONS, device=torch.device("cpu"), explain=True,
                      querydsl=True, batch_size=3, max_output_tokens=NEW_TOKENS)
    one = predict(loaded, tok, QUESTIONS, device=torch.device("cpu"), querydsl=True,
                  batch_size=1, max_output_tokens=NEW_TOKENS)
    assert [p.answer for p in batched] == [p.answer for p in one]
    assert [p.answer for p in one] == [ByteTokenizer().decode(ids[1:])
                                       for ids in greedy_ids(model, tokenizer)]
    assert all(p.rationale is not None for p in batched)
    assert all(p.rationale is None for p in one)
    assert all(isinstance(p.valid_json, bool) for p in one)
    # An exported directory predicts the same.
    out = export_model(tmp_path / "model", tmp_path / "export")
    plain, plain_tok, plain_dsl = load_for_prediction(out, torch.device("cpu"))
    assert plain_dsl
    again = predict(plain, plain_tok, QUESTIONS, device=torch.device("cpu"), querydsl=True,
                    max_output_tokens=NEW_TOKENS)
    assert [p.answer for p in again] == [p.answer for p in one]


def test_a_pretrained_base_and_its_tokenizer_with_added_characters(
    tmp_path: Path, t5_like_tokenizer: Path
) -> None:
    from transformers import AutoTokenizer

    from orchestrator.core.catalog import ARCHITECTURES
    from worker.models import random_t5

    base = tmp_path / "base"
    torch.manual_seed(0)
    random_t5(ARCHITECTURES["ladder/t5-tiny-s"]).save_pretrained(base)
    trial = spec("lora").model_copy(update={"model": str(base), "training": spec(
        "lora", init="pretrained", tokenizer=str(t5_like_tokenizer)).training})
    _, tokenizer = trained(trial, tmp_path / "model")
    out = export_model(tmp_path / "model", tmp_path / "export")
    saved = AutoTokenizer.from_pretrained(str(out))
    assert {"{", "}"} <= set(saved.get_vocab())  # the characters Ladder added went along
    assert saved("{", add_special_tokens=False)["input_ids"] == tokenizer.encode("{", 4)[:-1]
    assert f"base_model: {base}" in (out / "README.md").read_text()

    import shutil

    shutil.rmtree(base)
    with pytest.raises(ExportError, match=r"base checkpoint .* cannot be loaded"):
        load_trained(tmp_path / "model")


def test_errors_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"no saved weights .*training.saveModel: best"):
        load_trained(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match=r"is not a model: no config.json"):
        load_for_prediction(tmp_path / "empty", torch.device("cpu"))
    with pytest.raises(ExportError, match="not a trial's saved model"):
        load_trained(tmp_path / "empty")
    trial = spec("full")
    trained(trial, tmp_path / "model")
    (tmp_path / "model" / "model.safetensors").unlink()
    with pytest.raises(ExportError, match=r"has no model.safetensors"):
        load_trained(tmp_path / "model")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    with pytest.raises(ExportError, match="not empty"):
        export_model(tmp_path / "model", tmp_path / "out")
