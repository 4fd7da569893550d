"""``python -m benchmarks.methods [flags]``: the same as ``rewa bench methods [flags]``."""

import sys

from benchmarks import forward

if __name__ == "__main__":
    sys.exit(forward("methods"))
