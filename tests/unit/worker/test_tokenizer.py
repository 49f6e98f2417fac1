"""The offline byte tokenizer and the transformers wrapper behind one protocol."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.data import generate_querydsl
from worker.tokenizer import ByteTokenizer, HFTokenizer, TextTokenizer, load_tokenizer

BYTE = ByteTokenizer()


class TestByteVocabulary:
    def test_special_ids_and_size(self) -> None:
        assert (BYTE.pad_token_id, BYTE.eos_token_id, BYTE.vocab_size) == (0, 1, 259)

    def test_bytes_are_offset_by_three_and_eos_ends(self) -> None:
        assert BYTE.encode("A\x00\xff", 100) == [0x41 + 3, 3, 0xC3 + 3, 0xBF + 3, 1]

    @given(st.text())
    def test_round_trip(self, text: str) -> None:
        ids = BYTE.encode(text, 10**6)
        assert all(0 <= i < BYTE.vocab_size for i in ids)
        assert BYTE.decode(ids) == text

    @pytest.mark.parametrize("name", [None, "byte"], ids=["none", "byte"])
    def test_load_tokenizer_defaults_to_bytes(self, name: str | None) -> None:
        tok = load_tokenizer(name)
        assert isinstance(tok, ByteTokenizer)
        assert isinstance(tok, TextTokenizer)


class TestTruncation:
    @pytest.mark.parametrize(
        ("keep", "expected"), [("head", "abcd"), ("tail", "ghij")], ids=["head", "tail"]
    )
    def test_keeps_the_requested_end_and_eos_last(self, keep: str, expected: str) -> None:
        ids = BYTE.encode("abcdefghij", 5, keep=keep)
        assert len(ids) == 5
        assert ids[-1] == BYTE.eos_token_id
        assert BYTE.decode(ids) == expected

    def test_max_length_one_is_only_eos(self) -> None:
        assert BYTE.encode("anything", 1) == [1]

    @given(text=st.text(), max_length=st.integers(1, 64), keep=st.sampled_from(["head", "tail"]))
    def test_never_longer_never_splits_a_character(
        self, text: str, max_length: int, keep: str
    ) -> None:
        ids = BYTE.encode(text, max_length, keep=keep)
        assert len(ids) <= max_length
        assert ids[-1] == BYTE.eos_token_id
        decoded = BYTE.decode(ids)
        assert "\ufffd" not in decoded or "\ufffd" in text
        assert text.startswith(decoded) if keep == "head" else text.endswith(decoded)

    def test_tail_keeps_the_question_of_a_long_prompt(self) -> None:
        prompt = "instructions " * 500 + "Question: How many tickets are open?"
        assert BYTE.decode(BYTE.encode(prompt, 64, keep="tail")).endswith(
            "Question: How many tickets are open?"
        )

    @pytest.mark.parametrize(
        ("max_length", "keep", "message"),
        [(0, "head", "max_length"), (10, "middle", "keep")],
        ids=["zero-length", "unknown-keep"],
    )
    def test_bad_arguments_are_refused(self, max_length: int, keep: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            BYTE.encode("x", max_length, keep=keep)


class TestByteDecoding:
    @pytest.mark.parametrize(
        ("ids", "expected"),
        [
            ([0x68 + 3, 0x69 + 3, 1, 0x78 + 3], "hi"),
            ([0, 0x68 + 3, 0, 0x69 + 3, 0], "hi"),
            ([0x68 + 3, 2, 0x69 + 3], "h\ufffdi"),
            ([0x68 + 3, 300, -4], "h\ufffd\ufffd"),
            ([0xFF + 3, 0x61 + 3], "\ufffda"),
            ([], ""),
        ],
        ids=["stops-at-eos", "skips-pad", "unk", "out-of-range", "invalid-utf8", "empty"],
    )
    def test_decode(self, ids: list[int], expected: str) -> None:
        assert BYTE.decode(ids) == expected

    def test_decodes_tensor_rows(self) -> None:
        torch = pytest.importorskip("torch")
        row = torch.tensor([0x6F + 3, 0x6B + 3, 1, 0, 0])
        assert BYTE.decode(row) == "ok"


@pytest.fixture(scope="module")
def local_hf_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny word-level tokenizer saved the way a Hub checkpoint is, so no download is needed."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>", "how", "many", "tickets", "are", "open", "?", "size"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    path = tmp_path_factory.mktemp("hf-tokenizer")
    fast.save_pretrained(path)
    return path


class TestHFTokenizer:
    def test_implements_the_protocol(self, local_hf_tokenizer: Path) -> None:
        tok = load_tokenizer(str(local_hf_tokenizer))
        assert isinstance(tok, HFTokenizer)
        assert isinstance(tok, TextTokenizer)
        # The ten words plus one token per printable character no word contains.
        assert (tok.pad_token_id, tok.eos_token_id) == (0, 1)
        assert tok.vocab_size == 10 + len(tok.added_characters)

    def test_encode_appends_eos(self, local_hf_tokenizer: Path) -> None:
        tok = HFTokenizer(str(local_hf_tokenizer))
        assert tok.encode("how many tickets", 10) == [3, 4, 5, 1]

    @pytest.mark.parametrize(
        ("keep", "expected"), [("head", [3, 4, 1]), ("tail", [8, 9, 1])], ids=["head", "tail"]
    )
    def test_truncation(self, local_hf_tokenizer: Path, keep: str, expected: list[int]) -> None:
        tok = HFTokenizer(str(local_hf_tokenizer))
        assert tok.encode("how many tickets are open ? size", 3, keep=keep) == expected

    def test_decode_stops_at_eos_and_skips_pad(self, local_hf_tokenizer: Path) -> None:
        tok = HFTokenizer(str(local_hf_tokenizer))
        assert tok.decode([0, 5, 6, 7, 1, 3, 0]) == "tickets are open"

    def test_bad_arguments_are_refused(self, local_hf_tokenizer: Path) -> None:
        tok = HFTokenizer(str(local_hf_tokenizer))
        with pytest.raises(ValueError, match="max_length"):
            tok.encode("how", 0)


class TestCharactersTheVocabularyLacks:
    """FLAN-T5's vocabulary cannot write "{" or "}"; the wrapper adds what a JSON label needs."""

    def test_braces_are_added_and_nothing_a_piece_contains(self, t5_like_tokenizer: Path) -> None:
        from transformers import AutoTokenizer

        tok = HFTokenizer(str(t5_like_tokenizer))
        assert {"{", "}"} <= set(tok.added_characters)
        raw = AutoTokenizer.from_pretrained(str(t5_like_tokenizer))
        pieces = [p for p in raw.get_vocab() if p not in raw.all_special_tokens]
        for char in tok.added_characters:
            assert not any(char in piece for piece in pieces), char
        assert tok.vocab_size == len(raw) + len(tok.added_characters)

    def test_without_the_wrapper_a_brace_is_lost(self, t5_like_tokenizer: Path) -> None:
        """The failure being fixed: the raw tokenizer turns braces into unk."""
        from transformers import AutoTokenizer

        raw = AutoTokenizer.from_pretrained(str(t5_like_tokenizer))
        ids = raw('{"size": 3}', add_special_tokens=False)["input_ids"]
        assert raw.unk_token_id in ids
        assert "{" not in raw.decode(ids, skip_special_tokens=True)

    def test_every_generated_label_survives_as_json(self, t5_like_tokenizer: Path) -> None:
        tok = HFTokenizer(str(t5_like_tokenizer))
        for example in generate_querydsl(n=300, seed=7, preamble="short"):
            ids = tok.encode(example.label, 10**6)
            assert json.loads(tok.decode(ids)) == json.loads(example.label), example.label

    def test_text_without_added_characters_splits_as_before(self, t5_like_tokenizer: Path) -> None:
        from transformers import AutoTokenizer

        raw = AutoTokenizer.from_pretrained(str(t5_like_tokenizer))
        tok = HFTokenizer(str(t5_like_tokenizer))
        for example in generate_querydsl(n=50, seed=3, preamble="short"):
            text = example.rationale
            if any(c in text for c in tok.added_characters):
                continue
            assert tok.encode(text, 10**6)[:-1] == raw(text, add_special_tokens=False)["input_ids"]

    def test_a_complete_vocabulary_gets_nothing(self, tmp_path: Path) -> None:
        """A tokenizer with a piece for every printable character is left exactly as it was."""
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        words = ["<pad>", "</s>", "<unk>", *string.printable.strip()]
        core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
        core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
        PreTrainedTokenizerFast(
            tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
        ).save_pretrained(tmp_path)
        tok = HFTokenizer(str(tmp_path))
        assert tok.added_characters == ()
        assert tok.vocab_size == len(words)
