"""`ladder distill` against a REAL OpenAI-compatible server: `transformers serve` (FastAPI and
uvicorn, the `transformers[serving]` extra) on 127.0.0.1, serving a tiny random-weight Llama
built here (byte-level tokenizer, 2 layers, no download). Its answers are random bytes, so
they test for real what no scripted server can: the transport and the usage fields of a real
server, parsing failures on text nobody wrote, screening, and the cache against a real server.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.k8s.operator_harness import free_port

# The CLI of the transformers this interpreter imports (the venv's), else one on PATH.
SERVE = str(Path(sys.executable).parent / "transformers")
if not Path(SERVE).exists():
    SERVE = shutil.which("transformers") or SERVE
MISSING = [m for m in ("fastapi", "uvicorn", "openai") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING) or not Path(SERVE).exists(),
    reason=f"`transformers serve` needs the transformers[serving] extra (missing: "
    f"{', '.join(MISSING) or 'the transformers CLI'}); pip install -e '.[dev]' installs it",
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def _tiny_model(path: Path) -> None:
    """A random-weight causal LM with a byte-level tokenizer and a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for special in ("<s>", "</s>", "<pad>"):
        vocab[special] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=8192,
        bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"],
    )
    LlamaForCausalLM(config).save_pretrained(path)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base URL, model name) of a `transformers serve` process on 127.0.0.1."""
    root = tmp_path_factory.mktemp("serve")
    model = root / "tiny-llama"
    _tiny_model(model)
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(root / "hf")}
    log = (root / "serve.log").open("w")
    process = subprocess.Popen(
        [SERVE, "serve", str(model), "--host", "127.0.0.1", "--port", str(port),
         "--device", "cpu", "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited {process.returncode}: "
                            f"{(root / 'serve.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("transformers serve did not answer /health within 180 s")
            time.sleep(0.5)
        yield f"{base}/v1", str(model)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_random_answers_are_fetched_parsed_and_screened_out(served, tmp_path: Path) -> None:
    url, model = served
    inputs = tmp_path / "questions.jsonl"
    questions = ["Index: orders\nFields: status (keyword)\n\nQuestion: Open orders?",
                 "Index: tickets\nFields: priority (keyword)\n\nQuestion: Urgent tickets?",
                 "Index: logs\nFields: level (keyword)\n\nQuestion: Errors today?"]
    inputs.write_text("".join(json.dumps({"input": q}) + "\n" for q in questions))
    out = tmp_path / "distilled.jsonl"
    # A short template (no few-shot turns): a CPU generates for short prompts quickly.
    template = tmp_path / "template.yaml"
    template.write_text(json.dumps({"system": "Think step by step, then answer as "
                                    "'Rationale: ...' and 'Query DSL: {...}'.",
                                    "examples": []}))
    args = ["distill", str(inputs), "--url", url, "--model", model, "--out", str(out),
            "--template", str(template), "--max-tokens", "16", "--screen-retries", "1",
            "--concurrency", "2", "--no-progress", "--input-price", "1", "--output-price", "1"]
    result = CliRunner().invoke(app, args)
    # Random bytes never carry "Query DSL: {...}": nothing is kept, and the command says so.
    assert result.exit_code == 1, result.output
    assert "no answer passed screening" in " ".join(result.output.split())
    summary = json.loads((tmp_path / "distilled.summary.json").read_text())
    assert summary["inputs"] == 3 and summary["rejected"] == 3
    # Each input asked twice (once more, warmer), each answer paid, usage read from the server.
    assert summary["answers_paid"] == 6 and summary["requests"] == 6
    assert summary["prompt_tokens"] > 6 * 100  # system prompt and input, in bytes
    assert 6 <= summary["completion_tokens"] <= 6 * 16
    assert summary["cost_usd"] == pytest.approx(
        (summary["prompt_tokens"] + summary["completion_tokens"]) / 1e6)
    assert summary["reasons"]["no-label"] == 3
    assert set(summary["reasons"]) <= {"no-label", "truncated", "empty-rationale"}
    rejected = [json.loads(line) for line in (tmp_path / "distilled.rejected.jsonl").open()]
    assert [r["line"] for r in rejected] == [1, 2, 3]
    assert all(r["answer"] and r["attempts"] == 2 for r in rejected)

    # A rerun is answered from the cache: the real server is not asked again.
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1
    summary = json.loads((tmp_path / "distilled.summary.json").read_text())
    assert summary["answers_paid"] == 0 and summary["requests"] == 0
    assert summary["answers_cached"] == 6


def test_wrong_url_is_one_line(served, tmp_path: Path) -> None:
    url, model = served
    inputs = tmp_path / "q.jsonl"
    inputs.write_text('{"input": "Question: anything?"}\n')
    result = CliRunner().invoke(app, [
        "distill", str(inputs), "--url", url.removesuffix("/v1") + "/v9", "--model", model,
        "--out", str(tmp_path / "d.jsonl"), "--no-progress"])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "no such endpoint or model (HTTP 404" in text and "Traceback" not in text
    assert result.output.count("✗") == 1, result.output
