"""Fixtures shared by the worker's unit tests."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]

# One trial per dataset source, through the worker's own driver (`run_trial`), in a fresh
# interpreter: it reports each result and which model code it imported.
_TRIAL_DRIVER = """
import json, sys
from orchestrator.core.grid import expand, attempt_spec
from orchestrator.core.spec import parse_sweep
from worker.train import run_trial

results = []
out, sources = sys.argv[1], sys.argv[2:]
for source in sources:
    sweep = parse_sweep({"ladder": ["ladder/t5-tiny-s"], "methods": ["full"],
                         "training": {"init": "random"}, "dataset": {"source": source}})
    trial = expand(sweep).all_trials()[0]
    result = run_trial(attempt_spec(sweep, trial, attempt=1, output_dir=out))
    results.append({"status": result.status.value, "error": result.error})
loaded = [m for m in ("worker.models", "transformers", "peft", "ray") if m in sys.modules]
print(json.dumps({"results": results, "loaded": loaded}))
"""


@pytest.fixture
def failed_trials(tmp_path: Path) -> Callable[[Sequence[str]], list[str]]:
    """Run a trial on each dataset source; assert that each failed before any model code was
    imported (no `worker.models`, transformers, peft or Ray), and return their errors."""

    def run(sources: Sequence[str]) -> list[str]:
        proc = subprocess.run(
            [sys.executable, "-c", _TRIAL_DRIVER, str(tmp_path / "out"), *sources],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=180,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert report["loaded"] == [], report
        assert [r["status"] for r in report["results"]] == ["failed"] * len(sources), report
        return [r["error"] for r in report["results"]]

    return run


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models: one thread is many times faster than several on a shared CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def t5_like_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SentencePiece-style (Unigram, Metaspace) tokenizer that, like FLAN-T5's, never saw a brace.

    Trained here on Query DSL questions and rationales with every text containing "{" or "}"
    dropped, which is what T5's authors did to C4; saved the way a Hub checkpoint is, so the
    transformers wrapper loads it with no download.
    """
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import T5TokenizerFast

    from worker.data import generate_querydsl

    texts = [
        text
        for example in generate_querydsl(n=200, seed=1, preamble="short")
        for text in (example.input, example.rationale)
        if "{" not in text and "}" not in text
    ]
    core = Tokenizer(models.Unigram())
    core.normalizer = normalizers.NFKC()
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    core.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    core.train_from_iterator(
        texts,
        trainers.UnigramTrainer(
            vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
        ),
    )
    fast = T5TokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0
    )
    path = tmp_path_factory.mktemp("t5-like-tokenizer")
    fast.save_pretrained(path)
    return path
