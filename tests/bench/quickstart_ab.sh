#!/usr/bin/env bash
# The README quickstart, this working tree against another commit, side by side.
#
#     bash tests/bench/quickstart_ab.sh REV [ROUNDS]     # e.g. HEAD~1 2
#
# Checks REV out beside this tree (a git worktree under a temporary directory), then runs
# `ladder run examples/quickstart.yaml` ROUNDS times (default 2) for each, alternating, each in a
# fresh directory with its own store, through this tree's Python environment with
# PYTHONPATH=<that tree>, so both import their own `orchestrator` and `worker` (the local
# backend hands its trials the same path). Prints each run's wall seconds, the load average,
# and the mean wall of its trials by outcome from its store. Run it on a quiet machine: the
# two sides share it, and its speed drifts over a day (docs/benchmarks.md, section 7).
set -euo pipefail
cd "$(dirname "$0")/../.."
rev=${1:?usage: quickstart_ab.sh REV [ROUNDS]}
rounds=${2:-2}
root=$PWD
python="$root/.venv/bin/python"
work=$(mktemp -d)
git worktree add -q --detach "$work/other" "$rev"
trap 'git -C "$root" worktree remove --force "$work/other"; rm -rf "$work"' EXIT

for round in $(seq "$rounds"); do
  for side in this other; do
    tree=$root
    [ "$side" = other ] && tree=$work/other
    run=$work/$side-$round
    mkdir -p "$run"
    start=$(date +%s.%N)
    (cd "$run" && PYTHONPATH="$tree" "$python" -c 'import sys
from orchestrator.cli import main
sys.argv = ["ladder", "run", sys.argv[1]]
main()' "$tree/examples/quickstart.yaml" > out.txt 2>&1)
    end=$(date +%s.%N)
    trials=$("$python" - "$run/ladder.db" <<'EOF'
import sqlite3, statistics, sys
rows = sqlite3.connect(sys.argv[1]).execute("select status, wall_seconds from trials").fetchall()
by = {}
for status, wall in rows:
    by.setdefault(status, []).append(wall)
print(", ".join(f"{s} {len(w)} x {statistics.mean(w):.1f} s" for s, w in sorted(by.items())))
EOF
)
    printf '%-5s round %s: %6.1f s wall; load %s; trials: %s\n' "$side" "$round" \
      "$(awk -v a="$start" -v b="$end" 'BEGIN{print b - a}')" "$(cut -d' ' -f1 /proc/loadavg)" "$trials"
  done
done
