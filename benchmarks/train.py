"""``python -m benchmarks.train [flags]``: the same as ``rewa bench train [flags]``."""

import sys

from benchmarks import forward

if __name__ == "__main__":
    sys.exit(forward("train"))
