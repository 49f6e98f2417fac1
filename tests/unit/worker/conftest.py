"""Fixtures shared by the worker's unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest


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
