"""Ladder's orchestrator: everything outside a trial.

The pure core (`spec`, `catalog`, `lifecycle`, `grid`, `escalation`, `scheduler`, `plan`,
`estimate`) decides and never does I/O; `store`, `backends`, `operator`, `metrics`, `report`
and `cli` carry its decisions out. `.importlinter` enforces the split.
"""
