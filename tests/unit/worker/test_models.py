"""Models from the catalogue: FLAN-T5 parameter counts, untied heads, and the three methods."""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from torch import nn

from orchestrator.core.catalog import ARCHITECTURES
from orchestrator.core.worker_contract import AttemptSpec
from worker.models import build_model, count_parameters, random_t5
from worker.tokenizer import ByteTokenizer

# The published sizes (docs/paper.md, "Models"), to the parameter.
PUBLISHED = {
    "google/flan-t5-small": 76_961_152,
    "google/flan-t5-base": 247_577_856,
    "google/flan-t5-large": 783_150_080,
    "google/flan-t5-xl": 2_849_757_184,
}


@pytest.mark.parametrize(
    ("name", "device"),
    [
        ("google/flan-t5-small", "cpu"),
        ("google/flan-t5-base", "cpu"),
        ("google/flan-t5-large", "meta"),  # meta: shapes only, so the test stays cheap
        ("google/flan-t5-xl", "meta"),
    ],
)
def test_flan_t5_parameter_counts(name: str, device: str) -> None:
    with torch.device(device):
        model = random_t5(ARCHITECTURES[name])
    # parameters() yields a shared tensor once: a tied head would be missing from the sum.
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]
    assert ARCHITECTURES[name].parameters == PUBLISHED[name]
    assert model.lm_head.weight is not model.shared.weight
    assert model.encoder.embed_tokens.weight is model.shared.weight  # inputs stay shared
    assert model.config.tie_word_embeddings is False
    assert model.config.scale_decoder_outputs is False  # T5 v1.1 does not scale


def test_untied_head_is_initialised_and_stays_untied() -> None:
    model = random_t5(ARCHITECTURES["ladder/t5-tiny-s"])
    head, embedding = model.lm_head.weight, model.shared.weight
    assert not torch.equal(head, embedding)
    assert 0.5 < head.std().item() < 1.5  # T5's init for an untied head: N(0, 1)
    model.tie_weights()  # what peft and transformers call on their own
    assert model.lm_head.weight is head


def trial(method: str, **training: object) -> AttemptSpec:
    adapters = {} if method == "full" else {"rank": 4, "alpha": 8}
    return AttemptSpec(
        sweep="s", trial_id="t", lane="l", model="ladder/t5-tiny-s", method=method,
        training={"init": "random", "precision": "fp32", **training}, **adapters,
    )


def _train_step(model: nn.Module) -> float:
    x = torch.randint(3, 259, (2, 12))
    y = torch.randint(3, 259, (2, 7))
    loss = model(input_ids=x, attention_mask=torch.ones_like(x), labels=y).loss
    loss.backward()
    return loss.detach().item()


def test_full_trains_everything() -> None:
    model, tokenizer, info = build_model(trial("full"), torch.device("cpu"))
    assert isinstance(tokenizer, ByteTokenizer)
    assert info.trainable_parameters == info.total_parameters == ARCHITECTURES[
        "ladder/t5-tiny-s"].parameters
    _train_step(model)
    assert all(p.grad is not None for p in model.parameters())


def test_lora_trains_adapters_only() -> None:
    model, _, info = build_model(trial("lora", target_modules="all-linear"), torch.device("cpu"))
    base = ARCHITECTURES["ladder/t5-tiny-s"]
    # all-linear: every block Linear gets A (in x r) and B (r x out); the LM head does not.
    expected = sum(count * 4 * (i + o) for i, o, count in base.linear_shapes())
    assert info.trainable_parameters == expected
    assert info.total_parameters == base.parameters + expected
    _train_step(model)
    for name, p in model.named_parameters():
        assert (p.grad is not None) == ("lora_" in name), name


def test_lora_target_modules_list() -> None:
    _, _, info = build_model(trial("lora", target_modules=["q", "v"]), torch.device("cpu"))
    arch = ARCHITECTURES["ladder/t5-tiny-s"]
    attentions = arch.num_layers + 2 * arch.num_decoder_layers
    assert info.trainable_parameters == attentions * 2 * 4 * (arch.d_model + arch.inner_dim)


def test_qlora_quantizes_block_linears_in_memory() -> None:
    model, _, info = build_model(trial("qlora"), torch.device("cpu"))
    inner = model.base_model.model
    quantized = [n for n, m in inner.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    arch = ARCHITECTURES["ladder/t5-tiny-s"]
    # q, k, v, o (self and cross attention) and wi_0, wi_1; wo stays fp32, as transformers
    # keeps it for T5 (_keep_in_fp32_modules), and so does the LM head.
    assert len(quantized) == 4 * arch.num_layers + 8 * arch.num_decoder_layers + 2 * (
        arch.num_layers + arch.num_decoder_layers)
    assert not any(n.endswith((".wo", "lm_head")) for n in quantized)
    weight = inner.encoder.block[0].layer[0].SelfAttention.q.base_layer.weight
    assert weight.dtype == torch.uint8 and weight.bnb_quantized
    assert inner.lm_head.weight is not inner.shared.weight
    assert info.quantized and info.trainable_parameters < info.total_parameters
    assert info.total_parameters == arch.parameters + info.trainable_parameters
    assert torch.isfinite(torch.tensor(_train_step(model)))


def test_count_parameters_counts_4bit_elements() -> None:
    layer = bnb.nn.Linear4bit(64, 32, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(torch.randn(32, 64), requires_grad=False, quant_type="nf4")
    layer = layer.to("cpu")
    assert count_parameters(layer) == (0, 32 * 64)


@pytest.mark.parametrize("method", ["full", "qlora"])
def test_pretrained_from_a_local_directory(tmp_path: Path, method: str) -> None:
    """init: pretrained on a saved checkpoint keeps its untied head (no download involved)."""
    source = random_t5(ARCHITECTURES["ladder/t5-tiny-s"])
    source.save_pretrained(tmp_path)
    spec = AttemptSpec(
        sweep="s", trial_id="t", lane="l", model=str(tmp_path), method=method,
        rank=None if method == "full" else 4, alpha=None if method == "full" else 8,
        training={"init": "pretrained", "precision": "fp32", "tokenizer": "byte"},
    )
    model, _, _ = build_model(spec, torch.device("cpu"))
    loaded = model.base_model.model if method == "qlora" else model
    assert loaded.lm_head.weight is not loaded.shared.weight
    assert torch.equal(loaded.lm_head.weight, source.lm_head.weight)
    assert loaded.config.tie_word_embeddings is False


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_pretrained_model_grows_rows_for_added_characters(
    tmp_path: Path, t5_like_tokenizer: Path, method: str
) -> None:
    """A checkpoint with fewer embedding rows than its tokenizer (once "{" and "}" are added)
    is resized, and a label with braces trains through it: ids past the old rows would
    otherwise index out of range."""
    from transformers import T5Config, T5ForConditionalGeneration

    from worker.tokenizer import HFTokenizer

    raw_rows = HFTokenizer(str(t5_like_tokenizer)).vocab_size - 8  # too few for the added ids
    config = T5Config(
        vocab_size=raw_rows, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
    )
    T5ForConditionalGeneration(config).save_pretrained(tmp_path)
    adapters = method != "full"
    spec = AttemptSpec(
        sweep="s", trial_id="t", lane="l", model=str(tmp_path), method=method,
        rank=4 if adapters else None, alpha=8 if adapters else None,
        training={"init": "pretrained", "precision": "fp32", "tokenizer": str(t5_like_tokenizer)},
    )
    model, tokenizer, _ = build_model(spec, torch.device("cpu"))
    base = model.get_base_model() if adapters else model
    assert base.get_input_embeddings().num_embeddings == tokenizer.vocab_size
    assert base.get_output_embeddings().out_features == tokenizer.vocab_size
    labels = torch.tensor([tokenizer.encode('{"size": 3}', 32)])
    assert int(labels.max()) >= raw_rows  # the brace's id is one of the new rows
    inputs = torch.tensor([tokenizer.encode("how many", 32)])
    loss = model(input_ids=inputs, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_pretrained_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    from worker.models import ModelLoadError

    spec = AttemptSpec(
        sweep="s", trial_id="t", lane="l", model=str(tmp_path / "missing"), method="full",
        training={"init": "pretrained", "tokenizer": "byte"},
    )
    with pytest.raises(ModelLoadError, match="cannot load pretrained model"):
        build_model(spec, torch.device("cpu"))


def test_random_init_needs_a_known_architecture() -> None:
    from worker.models import ModelLoadError

    spec = AttemptSpec(sweep="s", trial_id="t", lane="l", model="acme/unknown-7b", method="full",
                     training={"init": "random"})
    with pytest.raises(ModelLoadError, match="no built-in architecture"):
        build_model(spec, torch.device("cpu"))


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_gradient_checkpointing(method: str) -> None:
    model, _, _ = build_model(trial(method, gradient_checkpointing=True), torch.device("cpu"))
    assert model.is_activation_checkpointing
    _train_step(model)
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)


class TestSaveTrained:
    """`training.saveModel`: the weights written, reloadable, and never half-written."""

    @staticmethod
    def spec(method: str) -> AttemptSpec:
        adapters = method != "full"
        return AttemptSpec(
            sweep="s", trial_id="t", lane="l", model="ladder/t5-tiny-s", method=method,
            rank=4 if adapters else None, alpha=8 if adapters else None,
            training={"init": "random", "precision": "fp32"},
        )

    @pytest.mark.parametrize("method", ["full", "lora"])
    def test_round_trip_gives_the_same_outputs(self, tmp_path: Path, method: str) -> None:
        import json

        from peft import PeftModel
        from transformers import T5ForConditionalGeneration

        from worker.models import MANIFEST, save_trained

        torch.manual_seed(0)
        model, tokenizer, _ = build_model(self.spec(method), torch.device("cpu"))
        with torch.no_grad():  # LoRA's B starts at zero: move every trainable weight
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.01)
        target = save_trained(model, tokenizer, tmp_path / "model", {"epoch": 2})

        assert json.loads((target / MANIFEST).read_text()) == {"epoch": 2, "tokenizer": "byte"}
        if method == "full":
            assert (target / "model.safetensors").exists()
            reloaded = T5ForConditionalGeneration.from_pretrained(target)
        else:
            assert (target / "adapter_model.safetensors").exists()
            assert not (target / "model.safetensors").exists()  # the adapter only
            torch.manual_seed(0)
            base = random_t5(ARCHITECTURES["ladder/t5-tiny-s"])
            reloaded = PeftModel.from_pretrained(base, target)
        ids = torch.tensor([ByteTokenizer().encode("how many", 16)])
        model.eval()
        reloaded.eval()
        with torch.no_grad():
            expected = model(input_ids=ids, decoder_input_ids=ids).logits
            actual = reloaded(input_ids=ids, decoder_input_ids=ids).logits
        torch.testing.assert_close(actual, expected)

    def test_a_pretrained_tokenizer_is_saved_with_its_added_characters(
        self, tmp_path: Path, t5_like_tokenizer: Path
    ) -> None:
        from worker.models import save_trained
        from worker.tokenizer import HFTokenizer

        tokenizer = HFTokenizer(str(t5_like_tokenizer))
        model = random_t5(ARCHITECTURES["ladder/t5-tiny-s"])
        target = save_trained(model, tokenizer, tmp_path / "model", {})
        again = HFTokenizer(str(target))
        assert again.vocab_size == tokenizer.vocab_size
        assert again.added_characters == ()  # already in the saved vocabulary
        assert again.encode('{"size": 3}', 64) == tokenizer.encode('{"size": 3}', 64)

    def test_a_failed_write_keeps_the_previous_save(self, tmp_path: Path) -> None:
        from worker.models import MANIFEST, save_trained

        class BrokenMidWrite(nn.Module):
            def save_pretrained(self, directory: str) -> None:
                (Path(directory) / "model.safetensors").write_bytes(b"half")
                raise OSError("disk full")

        model = random_t5(ARCHITECTURES["ladder/t5-tiny-s"])
        target = save_trained(model, ByteTokenizer(), tmp_path / "model", {"epoch": 1})
        before = sorted(p.name for p in target.iterdir())
        with pytest.raises(OSError, match="disk full"):
            save_trained(BrokenMidWrite(), ByteTokenizer(), target, {"epoch": 2})
        assert sorted(p.name for p in target.iterdir()) == before
        assert '"epoch": 1' in (target / MANIFEST).read_text()
        # The next save succeeds over the leftover partial directory.
        save_trained(model, ByteTokenizer(), target, {"epoch": 3})
        assert '"epoch": 3' in (target / MANIFEST).read_text()
        assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no partial, no previous


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_pretrained_loads_straight_onto_the_device(
    tmp_path: Path, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every method passes a device map, so no rank builds the fp32 model in host memory
    first (before, only QLoRA did; full and LoRA loaded on the host, then moved)."""
    from transformers import T5ForConditionalGeneration

    random_t5(ARCHITECTURES["ladder/t5-tiny-s"]).save_pretrained(tmp_path)
    calls: list[dict[str, object]] = []
    load = T5ForConditionalGeneration.from_pretrained.__func__

    def spy(cls, *args: object, **kwargs: object):
        calls.append(kwargs)
        return load(cls, *args, **kwargs)

    monkeypatch.setattr(T5ForConditionalGeneration, "from_pretrained", classmethod(spy))
    spec = AttemptSpec(
        sweep="s", trial_id="t", lane="l", model=str(tmp_path), method=method,
        rank=None if method == "full" else 4, alpha=None if method == "full" else 8,
        training={"init": "pretrained", "precision": "fp32", "tokenizer": "byte"},
    )
    model, _, _ = build_model(spec, torch.device("cpu"))
    assert [c["device_map"] for c in calls] == [{"": torch.device("cpu")}]
    assert {p.device.type for p in model.parameters()} == {"cpu"}
