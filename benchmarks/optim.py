"""``python -m benchmarks.optim [flags]``: the same as ``rewa bench optim [flags]``."""

import sys

from benchmarks import forward

if __name__ == "__main__":
    sys.exit(forward("optim"))
