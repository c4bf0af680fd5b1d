"""`python -m bench`: the whole harness (see bench/run.py and bench/README.md)."""

import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main())
