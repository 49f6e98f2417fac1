"""The DSS dataset: loading and validating, the deterministic split, the built-in generator.

Importing this package never imports torch (`ladder dataset querydsl` runs without it).
Batching, which needs torch, is imported explicitly from `worker.data.batching`.
"""

from worker.data.dsl_validation import validate_query_dsl
from worker.data.dss import (
    DatasetError,
    DSSExample,
    drop_duplicate_inputs,
    load_dss,
    split_examples,
    split_train_eval,
)
from worker.data.querydsl import generate_querydsl, write_dataset

__all__ = [
    "DSSExample",
    "DatasetError",
    "drop_duplicate_inputs",
    "generate_querydsl",
    "load_dss",
    "split_examples",
    "split_train_eval",
    "validate_query_dsl",
    "write_dataset",
]
