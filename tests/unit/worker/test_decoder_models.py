"""Decoder-only models: random build per family and method, the causal DSS layout (prompt
masked, eos appended, right padding to train, left padding to generate), chat templates."""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch

from orchestrator.core.catalog import ARCHITECTURES
from orchestrator.core.worker_contract import AttemptSpec
from tests.unit.worker.helpers import save_chat_tokenizer
from worker.data import DSSExample
from worker.data.batching import (
    IGNORE_INDEX,
    PromptFrame,
    collate,
    collate_prompts,
    encode_examples,
)
from worker.generation import generate_texts
from worker.models import build_model, decoder_config, random_decoder
from worker.tokenizer import ByteTokenizer, HFTokenizer
from worker.train import dss_forward, prompt_frame

BYTE = ByteTokenizer()
EXAMPLES = [DSSExample(f"count the {'x' * i} cities", '{"size": 0}', "no hits asked")
            for i in (1, 9, 4, 2)]


def trial(model: str, method: str, **training: object) -> AttemptSpec:
    adapters = {} if method == "full" else {"rank": 4, "alpha": 8}
    return AttemptSpec(sweep="s", trial_id="t", lane="l", model=model, method=method,
                     training={"init": "random", "precision": "fp32", **training}, **adapters)


def test_llama3_configs_carry_rope_scaling_and_untied_heads_stay_untied() -> None:
    config = decoder_config(ARCHITECTURES["meta-llama/Llama-3.1-8B"])
    assert config.rope_parameters["rope_type"] == "llama3"
    assert config.rope_parameters["rope_theta"] == 500000.0
    with torch.device("meta"):
        model = random_decoder(ARCHITECTURES["Qwen/Qwen2.5-7B"])
    model.tie_weights()  # what peft and transformers call on their own
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == 7_615_616_512


def test_causal_layout_masks_the_prompt_and_pads_right_then_left() -> None:
    encoded = encode_examples(EXAMPLES[:2], BYTE, 40, 16, causal=True)
    first = encoded[0]
    assert first.predict_ids[-1] == BYTE.encode("\n", 8)[0]  # the plain frame's newline
    assert BYTE.EOS not in first.predict_ids and first.label_ids[-1] == BYTE.EOS
    batch = collate(encoded, BYTE.pad_token_id)
    ids, labels = batch["predict_input_ids"], batch["labels"]
    n = len(first.predict_ids)
    assert ids[0, :n].tolist() == first.predict_ids
    assert labels[0, :n].eq(IGNORE_INDEX).all()  # the prompt is masked
    assert labels[0, n:n + len(first.label_ids)].tolist() == first.label_ids  # eos included
    assert ids.shape == labels.shape == batch["predict_attention_mask"].shape
    assert batch["predict_attention_mask"][0, -1] == 0 or len(first.lengths) == 4  # right pad
    prompts, mask = collate_prompts(encoded, BYTE.pad_token_id)
    assert prompts[0, -1].item() == first.predict_ids[-1]  # left pad: every prompt ends last
    assert mask[:, -1].all()
    # The input is truncated (its tail kept), never the prefix or frame.
    long = encode_examples([DSSExample("y" * 500 + "?", "{}", "r")], BYTE, 30, 8, causal=True)
    assert len(long[0].predict_ids) == 30 and BYTE.decode(long[0].predict_ids).startswith(
        "predict: ") and BYTE.decode(long[0].predict_ids).endswith("y?\n")


@pytest.mark.parametrize(("model", "method"), [
    ("ladder/qwen-tiny-s", "full"), ("ladder/llama-tiny-s", "lora"),
    ("ladder/qwen-tiny-s", "qlora"),  # every pair runs through Ray: tests/integration/sweep
])
def test_each_method_trains_and_generates(model: str, method: str) -> None:
    torch.manual_seed(0)
    spec = trial(model, method, gradient_checkpointing=method == "lora")
    net, tok, info = build_model(spec, torch.device("cpu"))
    base = info.total_parameters - (0 if method == "full" else info.trainable_parameters)
    assert info.causal and base == ARCHITECTURES[model].parameters
    if method != "full":
        assert info.trainable_parameters < info.total_parameters // 3
        names = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in net.named_parameters()
                 if "lora_A" in n}
        assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                         "down_proj"}
    if method == "qlora":
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in net.modules())
    batch = collate(encode_examples(EXAMPLES, tok, 48, 16, causal=True), tok.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(3):
        loss, _, _ = dss_forward(net, batch, 0.5)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    encoded = encode_examples(EXAMPLES[:3], tok, 48, 16, causal=True)
    texts = generate_texts(net, tok, encoded, batch_size=2, max_new_tokens=5,
                           device=torch.device("cpu"))
    alone = [generate_texts(net, tok, [e], batch_size=1, max_new_tokens=5,
                            device=torch.device("cpu"))[0] for e in encoded]
    assert texts == alone  # left padding changes nothing; only new tokens are decoded
    assert not any(t.startswith("predict") for t in texts)


def test_lora_targets_by_short_name() -> None:
    net, _, _ = build_model(trial("ladder/qwen-tiny-s", "lora", target_modules=["q", "v"]),
                               torch.device("cpu"))
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in net.named_parameters()
               if "lora_A" in n}
    assert adapted == {"q_proj", "v_proj"}
    with pytest.raises(ValueError, match="targetModules: wo"):
        build_model(trial("ladder/qwen-tiny-s", "lora", target_modules=["wo"]),
                    torch.device("cpu"))


def _chat_tokenizer(tmp_path: object) -> HFTokenizer:
    return HFTokenizer(str(save_chat_tokenizer(Path(f"{tmp_path}/tok"))))


def test_chat_template_frames_the_prompt(tmp_path: object) -> None:
    tok = _chat_tokenizer(tmp_path)
    frame = prompt_frame(tok, True, causal=True)
    assert isinstance(frame, PromptFrame)
    assert frame.head == [3] and frame.tail[-1] == 4  # <|user|> ... \n<|assistant|>
    (enc,) = encode_examples(EXAMPLES[:1], tok, 64, 16, causal=True, frame=frame)
    assert enc.predict_ids[:2] == [3, tok.encode("p", 4)[0]] and enc.predict_ids[-1] == 4
    assert enc.label_ids[-1] == tok.eos_token_id
    plain = prompt_frame(tok, False, causal=True)
    assert plain.head == [2]  # bos, as Llama's prompts start
    assert prompt_frame(BYTE, True, causal=True) == PromptFrame.plain(BYTE)  # no template
    assert prompt_frame(tok, True, causal=False) is None


def test_pretrained_decoder_loads_from_a_local_path_for_qlora(tmp_path: object) -> None:
    torch.manual_seed(0)
    saved = random_decoder(ARCHITECTURES["ladder/qwen-tiny-s"])
    path = f"{tmp_path}/qwen-local"
    saved.save_pretrained(path)
    spec = trial(path, "qlora", init="pretrained", tokenizer="byte")
    net, tok, info = build_model(spec, torch.device("cpu"))
    assert info.causal and info.quantized
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in net.modules())
    batch = collate(encode_examples(EXAMPLES[:2], tok, 48, 16, causal=True), tok.pad_token_id)
    loss, _, _ = dss_forward(net, batch, 0.5)
    loss.backward()
    assert torch.isfinite(loss)
