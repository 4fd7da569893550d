"""Median (over rounds) ratios of ReWA's step to torch's fastest same-base step from the tables
scripts/bench_ab.sh writes: python scripts/bench_ab_ratios.py OUT."""

import re
import statistics
import sys

d0 = sys.argv[1]
res = {}
for side in ("base", "new"):
    for r in range(1, 5):
        txt = open(f"{d0}/{side}_{r}/optim.md").read()
        cur = None
        for line in txt.splitlines():
            m = re.match(r"## (\w+):", line)
            if m:
                cur = m.group(1)
                continue
            m = re.match(r"\|\s+([a-z-]+)\s+\|\s+([\d.]+)", line)
            if m and cur:
                res.setdefault((side, cur, m.group(1)), []).append(float(m.group(2)))
for s in sorted({k[1] for k in res}):
    for side in ("base", "new"):
        d = {k[2]: v for k, v in res.items() if k[0] == side and k[1] == s}
        r = lambda a, b: statistics.median([x / y for x, y in zip(d[a], d[b])])
        print(
            f"{s:9s} {side}: rewa-sgd/sgd-foreach {r('rewa-sgd-default', 'sgd-foreach'):.2f} (nodetect {r('rewa-sgd-nodetect', 'sgd-foreach'):.2f}); rewa-adamw/adamw-fused {r('rewa-adamw-default', 'adamw-fused'):.2f} (nodetect {r('rewa-adamw-nodetect', 'adamw-fused'):.2f})"
        )
