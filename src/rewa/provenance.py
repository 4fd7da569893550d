"""Where a result came from: command, commit, hardware, software, date."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The instruction sets that decide CPU speed and whether bf16 is native (model.bf16: auto), as
# torch detects them: "AMD EPYC" alone names machines with and without AVX512-BF16.
_CPU_FEATURES = {
    "avx2": "_is_avx2_supported",
    "avx512": "_is_avx512_supported",
    "avx512_bf16": "_is_avx512_bf16_supported",
    "amx": "_is_amx_tile_supported",
}


def cpu_features() -> list[str]:
    """Which of avx2, avx512, avx512_bf16 and amx torch detects on this CPU."""
    return [
        name
        for name, probe in _CPU_FEATURES.items()
        if bool(getattr(torch.cpu, probe, lambda: False)())
    ]


def _command() -> str:
    """The command line that is running: ``rewa ...`` for the CLI (its console script or
    ``python -m rewa``), ``python PROGRAM ...`` for anything else (e.g. a script in scripts/)."""
    if not sys.argv:
        return ""
    program = Path(sys.argv[0])
    is_cli = program.name == "rewa" or program.parts[-2:] == ("rewa", "__main__.py")
    return " ".join(["rewa" if is_cli else f"python {sys.argv[0]}", *sys.argv[1:]])


def provenance() -> dict[str, Any]:
    """A JSON-able record to store next to every result file."""
    # results/ is excluded: rerunning a committed experiment rewrites its own files there
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!results")
    record: dict[str, Any] = {
        "command": _command(),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(status) if status is not None else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_model(),
        "cpu_features": cpu_features(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name()
        record["cuda"] = torch.version.cuda
    return record
