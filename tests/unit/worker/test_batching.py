"""DSS encoding, collation, length-grouped batches, the probe batch and DDP sharding."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.data import DSSExample, generate_querydsl
from worker.data.batching import (
    IGNORE_INDEX,
    EncodedExample,
    collate,
    encode_examples,
    length_grouped_batches,
    longest_batch,
    padded_size,
    shard,
)
from worker.tokenizer import ByteTokenizer

BYTE = ByteTokenizer()


def fake(p: int, e: int, label: int, r: int) -> EncodedExample:
    """An encoded example with the given lengths (content irrelevant, eos last)."""
    return EncodedExample(
        predict_ids=[5] * (p - 1) + [1],
        explain_ids=[6] * (e - 1) + [1],
        label_ids=[7] * (label - 1) + [1],
        rationale_ids=[8] * (r - 1) + [1],
    )


lengths = st.tuples(*[st.integers(1, 40)] * 4)
encoded_sets = st.lists(lengths, min_size=0, max_size=60).map(lambda ls: [fake(*x) for x in ls])


class TestEncoding:
    def test_each_example_gets_both_task_inputs_and_both_targets(self) -> None:
        ex = DSSExample("Question: how many?", '{"size":0}', "Step 1: count.")
        [enc] = encode_examples([ex], BYTE, max_input_tokens=100, max_output_tokens=100)
        assert BYTE.decode(enc.predict_ids) == "predict: Question: how many?"
        assert BYTE.decode(enc.explain_ids) == "explain: Question: how many?"
        assert BYTE.decode(enc.label_ids) == '{"size":0}'
        assert BYTE.decode(enc.rationale_ids) == "Step 1: count."
        assert all(ids[-1] == BYTE.eos_token_id for ids in (enc.predict_ids, enc.label_ids))

    def test_long_inputs_keep_prefix_and_question(self) -> None:
        ex = DSSExample("rules " * 1000 + "Question: which?", "{}", "r")
        [enc] = encode_examples([ex], BYTE, max_input_tokens=40, max_output_tokens=8)
        for ids, prefix in ((enc.predict_ids, "predict: "), (enc.explain_ids, "explain: ")):
            assert len(ids) == 40
            text = BYTE.decode(ids)
            assert text.startswith(prefix)
            assert text.endswith("Question: which?")

    def test_long_targets_keep_their_head(self) -> None:
        ex = DSSExample("q", '{"query":{"match_all":{}}}', "Step 1: " + "x" * 500)
        [enc] = encode_examples([ex], BYTE, max_input_tokens=32, max_output_tokens=10)
        assert BYTE.decode(enc.label_ids) == '{"query":'
        assert BYTE.decode(enc.rationale_ids) == "Step 1: x"
        assert len(enc.label_ids) == len(enc.rationale_ids) == 10

    def test_generated_examples_fit_the_papers_limits(self) -> None:
        examples = generate_querydsl(50, preamble="full")
        for enc in encode_examples(examples, BYTE, 1400, 1024):
            assert len(enc.predict_ids) <= 1400
            assert len(enc.label_ids) <= 1024
            assert BYTE.decode(enc.predict_ids).startswith("predict: ")

    @pytest.mark.parametrize(
        ("max_input", "max_output", "message"),
        [(10, 8, "max_input_tokens"), (64, 0, "max_output_tokens")],
        ids=["input-too-small-for-prefix", "no-output-room"],
    )
    def test_impossible_limits_are_refused(
        self, max_input: int, max_output: int, message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            encode_examples([DSSExample("q", "{}", "r")], BYTE, max_input, max_output)


class TestCollate:
    def test_pads_to_the_longest_and_masks_targets(self) -> None:
        batch = [fake(3, 4, 2, 5), fake(5, 2, 4, 1)]
        out = collate(batch, pad_id=0)
        assert {k: tuple(v.shape) for k, v in out.items()} == {
            "predict_input_ids": (2, 5),
            "predict_attention_mask": (2, 5),
            "labels": (2, 4),
            "explain_input_ids": (2, 4),
            "explain_attention_mask": (2, 4),
            "rationale_labels": (2, 5),
        }
        assert all(v.dtype == torch.long for v in out.values())
        assert out["predict_input_ids"].tolist() == [[5, 5, 1, 0, 0], [5, 5, 5, 5, 1]]
        assert out["predict_attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
        assert out["labels"].tolist() == [[7, 1, -100, -100], [7, 7, 7, 1]]
        assert out["rationale_labels"].tolist() == [[8, 8, 8, 8, 1], [1, -100, -100, -100, -100]]
        assert out["explain_attention_mask"].sum().item() == 6

    def test_eos_survives_when_pad_equals_eos(self) -> None:
        out = collate([fake(2, 2, 1, 1), fake(2, 2, 3, 1)], pad_id=1)
        assert out["labels"].tolist() == [[1, IGNORE_INDEX, IGNORE_INDEX], [7, 7, 1]]

    def test_an_empty_batch_is_refused(self) -> None:
        with pytest.raises(ValueError, match="empty"):
            collate([], pad_id=0)


class TestLengthGrouping:
    @settings(max_examples=150, deadline=None)
    @given(
        encoded=encoded_sets,
        batch_size=st.integers(1, 9),
        seed=st.integers(0, 2**32),
        epoch=st.integers(0, 100),
    )
    def test_every_index_exactly_once(
        self, encoded: list[EncodedExample], batch_size: int, seed: int, epoch: int
    ) -> None:
        batches = length_grouped_batches(encoded, batch_size, seed, epoch)
        assert sorted(i for b in batches for i in b) == list(range(len(encoded)))
        assert all(1 <= len(b) <= batch_size for b in batches)

    def test_deterministic_per_seed_and_epoch(self) -> None:
        encoded = [fake(*random.Random(i).choices(range(1, 50), k=4)) for i in range(300)]
        a = length_grouped_batches(encoded, 8, seed=1, epoch=2)
        assert a == length_grouped_batches(encoded, 8, seed=1, epoch=2)
        assert a != length_grouped_batches(encoded, 8, seed=1, epoch=3)
        assert a != length_grouped_batches(encoded, 8, seed=2, epoch=2)

    def test_groups_pad_less_than_random_batches(self) -> None:
        examples = generate_querydsl(400, preamble="short")
        encoded = encode_examples(examples, BYTE, 1024, 1024)
        grouped = length_grouped_batches(encoded, 8, seed=0, epoch=0)
        order = list(range(len(encoded)))
        random.Random(0).shuffle(order)
        shuffled = [order[i : i + 8] for i in range(0, len(order), 8)]
        grouped_cost = sum(padded_size(encoded, b) for b in grouped)
        random_cost = sum(padded_size(encoded, b) for b in shuffled)
        assert grouped_cost < 0.9 * random_cost


class TestLongestBatch:
    @settings(max_examples=150, deadline=None)
    @given(
        encoded=st.lists(lengths, min_size=1, max_size=9).map(lambda ls: [fake(*x) for x in ls]),
        batch_size=st.integers(1, 5),
    )
    def test_matches_brute_force(self, encoded: list[EncodedExample], batch_size: int) -> None:
        chosen = longest_batch(encoded, batch_size)
        assert len(chosen) == min(batch_size, len(encoded))
        assert len(set(chosen)) == len(chosen)
        best = max(
            padded_size(encoded, combo)
            for combo in itertools.combinations(range(len(encoded)), len(chosen))
        )
        assert padded_size(encoded, chosen) == best

    @settings(max_examples=50, deadline=None)
    @given(encoded=encoded_sets.filter(bool), batch_size=st.integers(1, 8), seed=st.integers())
    def test_no_training_batch_pads_to_more(
        self, encoded: list[EncodedExample], batch_size: int, seed: int
    ) -> None:
        probe = padded_size(encoded, longest_batch(encoded, batch_size))
        for batch in length_grouped_batches(encoded, batch_size, seed, epoch=0):
            assert padded_size(encoded, batch) <= probe

    def test_the_longest_dimensions_may_come_from_different_examples(self) -> None:
        encoded = [fake(50, 50, 2, 2), fake(2, 2, 60, 2), fake(2, 2, 2, 70), fake(30, 30, 30, 30)]
        assert longest_batch(encoded, 3) == [0, 1, 2]
        assert longest_batch(encoded, 1) == [3]

    def test_ties_prefer_the_lowest_index(self) -> None:
        assert longest_batch([fake(3, 3, 3, 3)] * 5, 2) == [0, 1]


class TestShard:
    @settings(max_examples=200, deadline=None)
    @given(
        n=st.integers(0, 100),
        world_size=st.integers(1, 9),
        drop_last=st.booleans(),
    )
    def test_every_rank_runs_the_same_number_of_steps(
        self, n: int, world_size: int, drop_last: bool
    ) -> None:
        items = list(range(n))
        shards = [shard(items, r, world_size, drop_last=drop_last) for r in range(world_size)]
        assert len({len(s) for s in shards}) == 1
        seen = Counter(i for s in shards for i in s)
        if drop_last:
            assert len(seen) == n - n % world_size
            assert set(seen.values()) <= {1}
        else:
            assert set(seen) == set(items)
            assert sum(seen.values()) - n < world_size

    def test_shards_batches_round_robin(self) -> None:
        batches = [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
        assert shard(batches, 0, 2) == [[0, 1], [4, 5], [8]]
        assert shard(batches, 1, 2) == [[2, 3], [6, 7], [0, 1]]
        assert shard(batches, 1, 2, drop_last=True) == [[2, 3], [6, 7]]

    def test_one_rank_gets_everything(self) -> None:
        assert shard([3, 1, 2], 0, 1) == [3, 1, 2]

    @pytest.mark.parametrize(
        ("rank", "world_size", "message"),
        [(0, 0, "world_size"), (2, 2, "rank"), (-1, 2, "rank")],
        ids=["no-ranks", "rank-too-large", "negative-rank"],
    )
    def test_bad_ranks_are_refused(self, rank: int, world_size: int, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            shard([1, 2, 3], rank, world_size)
