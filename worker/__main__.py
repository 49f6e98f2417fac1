"""`python -m worker run --trial FILE` (see worker.cli).

When the local backend gives the job a fork server (names.FORK_SERVER_ENV), this process only
asks the server to fork the trial and waits for it (worker/forkserver.py), before importing
anything heavy; if the server cannot be reached it runs the trial itself."""

import os
import sys

if __name__ == "__main__":
    from orchestrator.core.names import FORK_SERVER_ENV

    server = os.environ.get(FORK_SERVER_ENV, "")
    if server not in ("", "0") and sys.argv[1:2] == ["run"]:
        from worker.forkserver import run_forked

        forked = run_forked(server, sys.argv[1:])
        if forked is not None:
            sys.exit(forked)
    from worker.cli import main

    sys.exit(main())
