"""The metrics the paper's limitations section asks for, on generated labels: BLEU, chrF and
TER (sacrebleu) and the structural similarity of the generated Query DSL; and the two
throughput figures of a trial's summary."""

from __future__ import annotations

import pytest

from worker.generation import dsl_similarity, leaves, text_scores
from worker.train import Progress

LABEL = '{"query": {"bool": {"must": [{"term": {"city": "Oslo"}}, {"range": {"age": {"gte": 3}}}]}}, "size": 5}'  # noqa: E501


def test_leaves_are_paths_with_values() -> None:
    assert leaves({"a": {"b": 1, "c": [2, {}]}, "d": []}) == {
        (("a", "b"), "1"): 1, (("a", "c", 0), "2"): 1, (("a", "c", 1), "{}"): 1,
        (("d",), "[]"): 1,
    }


@pytest.mark.parametrize(("generated", "similarity"), [
    pytest.param(LABEL, 1.0, id="identical"),
    pytest.param('{"size":5,"query":{"bool":{"must":[{"term":{"city":"Oslo"}},'
                 '{"range":{"age":{"gte":3}}}]}}}', 1.0, id="other-order-and-spacing"),
    # 3 leaves each, 2 shared: 2 / (3 + 3 - 2).
    pytest.param('{"query": {"bool": {"must": [{"term": {"city": "Bergen"}}, '
                 '{"range": {"age": {"gte": 3}}}]}}, "size": 5}', 2 / 4, id="one-value-wrong"),
    # 2 leaves against 3, both shared: 2 / 3.
    pytest.param('{"query": {"bool": {"must": [{"term": {"city": "Oslo"}}]}}, "size": 5}',
                 2 / 3, id="one-clause-missing"),
    pytest.param('{"size": 6}', 0.0, id="nothing-shared"),
    pytest.param('{"query": ', 0.0, id="not-json"),
])
def test_dsl_similarity_by_hand(generated: str, similarity: float) -> None:
    assert dsl_similarity(generated, LABEL) == pytest.approx(similarity)


def test_similarity_needs_a_json_label() -> None:
    assert dsl_similarity("free text", "free text") is None
    assert text_scores(["free text"], ["free text"]).dsl_similarity is None


def test_text_scores_by_hand() -> None:
    same = text_scores([LABEL, '{"size": 1}'], [LABEL, '{"size": 1}'])
    assert same.bleu == pytest.approx(100.0) and same.chrf == pytest.approx(100.0)
    assert same.ter == 0.0 and same.dsl_similarity == 1.0
    # TER: edits over reference words. "a b c d" -> "a x c d": one substitution in 4.
    assert text_scores(["a x c d"], ["a b c d"]).ter == pytest.approx(25.0)
    # BLEU: n-gram precisions 3/4, 1/3, 0/2, 0/1; sacrebleu's default "exp" smoothing makes
    # the k-th zero count 1/2**k: 0.5/2 and 0.25/1. Same length: no brevity penalty.
    worse = text_scores(["a x c d"], ["a b c d"])
    assert worse.bleu == pytest.approx(100 * (3 / 4 * 1 / 3 * 0.25 * 0.25) ** 0.25)
    assert 0 < worse.chrf < 100
    mixed = text_scores([LABEL, "{"], [LABEL, LABEL])
    assert mixed.dsl_similarity == pytest.approx(0.5)
    assert 0 < mixed.bleu < 100
    assert text_scores([], []).bleu is None
    with pytest.raises(ValueError):
        text_scores(["x"], [])


def test_summary_gives_throughput_both_ways() -> None:
    progress = Progress(first_step_seconds=1.0, trainable=1, total=1, sink=None)
    progress.trained(2.0, 40)  # 40 samples in 2 s of training loop
    progress.end_to_end(8.0)  # the loop took 8 s with evaluation, generation and saves
    summary = progress.summary()
    assert summary["samples_per_second"] == 20.0
    assert summary["end_to_end_samples_per_second"] == 5.0
