"""`python -m worker run --trial FILE` (see worker.cli)."""

import sys

from worker.cli import main

if __name__ == "__main__":
    sys.exit(main())
