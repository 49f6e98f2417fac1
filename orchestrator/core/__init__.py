"""Ladder's pure core: it decides and never does I/O.

The Sweep spec and its validation, the grid, the ladder's escalation rules, the scheduler,
`plan(desired, observed) -> actions`, the trial lifecycle, the model catalog, how an attempt
ended (`classify`), the memory estimator, the formatting of figures and the worker contract
(`worker_contract`: what a worker is given and returns). Every backend (the local
runner and the Kubernetes controller) calls into it; it imports nothing of theirs, and no I/O
library (import-linter's `pure-core` contract enforces both). See docs/architecture.md.
"""
