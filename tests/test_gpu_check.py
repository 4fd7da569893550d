"""scripts/gpu_check.sh --smoke: the GPU check's whole path (CUDA tests, benchmarks, the published
recipe's training and sweep, the README) on the CPU at toy size, as CI runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_runs_every_stage_and_writes_the_readme(tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--smoke", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    stages = (out / "stages.txt").read_text().split("\n")
    names = [line.split()[0] for line in stages if line]
    assert names == ["tests", "bench_optim", "bench_precision", "train", "readme"]
    assert all(" rc=0 " in line for line in stages if line), stages
    readme = (out / "README.md").read_text()
    for heading in ("## CUDA tests", "## Optimizer step", "## Training throughput",
                    "## The published recipe"):  # fmt: skip
        assert heading in readme
    assert re.search(r"\|\s*99\.2%\s*\|\s*0\.\d{4}\s*\|", readme)  # measured at 99.2%
    assert "90.2% @ 99.2%" in readme and "not trained" not in readme
    assert (out / "run" / "eval.json").is_file() and not list((out / "run").glob("*.pt"))


def test_gpu_check_rejects_unknown_flags():
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--fast"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "unknown argument --fast" in done.stderr
