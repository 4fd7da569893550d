"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    # tiny tensors: one thread is faster, and much faster on a shared, busy CPU
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def compiler_works():
    """Skip where torch.compile cannot build a kernel (no C++ compiler, unsupported Python)."""
    try:
        torch.compile(lambda t: t * 2.0 + 1.0, dynamic=True, fullgraph=True)(torch.ones(4))
    except Exception as err:
        pytest.skip(f"torch.compile does not work on this machine: {type(err).__name__}: {err}")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a GPU: skipped where torch sees none (CI has none)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (scripts/gpu_check.sh runs these)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
