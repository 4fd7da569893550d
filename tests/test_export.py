"""Export: exact round trips of the dense and sparse files, encodings, sparse-kernel inference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rewa.export import (
    ExportError,
    decode_tensor,
    encode_tensor,
    index_dtype,
    load_sparse,
    pack_bits,
    payload_bytes,
    save_dense,
    save_sparse,
    sparse_inference_model,
    unpack_bits,
)
from rewa.sparsity import prune_, sparsity_report

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def trained_pruned(sparsity: float) -> nn.Module:
    model = small_cnn()
    model.train()
    model(torch.randn(16, 3, 8, 8))  # give BatchNorm running statistics
    prune_(model, sparsity=sparsity)
    return model.eval()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.booleans(), min_size=0, max_size=100))
def test_pack_bits_round_trip(bits):
    mask = torch.tensor(bits, dtype=torch.bool)
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-len(bits) // 8)
    assert torch.equal(unpack_bits(packed, len(bits)), mask)


def test_pack_bits_is_lsb_first():
    mask = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    assert pack_bits(mask).tolist() == [129, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(("density", "encoding"), [(1.0, "dense"), (0.2, "bitmap"), (0.01, "coo")])
def test_encode_picks_the_smallest_encoding_and_decodes_exactly(dtype, density, encoding):
    gen = torch.Generator().manual_seed(1)
    t = torch.randn(40, 50, generator=gen).to(dtype)
    t[torch.rand(40, 50, generator=gen) >= density] = 0
    entry = encode_tensor(t)
    assert entry["encoding"] == encoding
    out = decode_tensor(entry)
    assert out.dtype == dtype and out.shape == t.shape
    assert torch.equal(out, t)


def test_index_dtype_boundaries():
    assert index_dtype(2**15) == torch.int16  # largest index 32767
    assert index_dtype(2**15 + 1) == torch.int32
    assert index_dtype(2**31 + 1) == torch.int64
    t = torch.zeros(2**15 + 7)
    t[-1] = 3.0
    entry = encode_tensor(t)
    assert entry["encoding"] == "coo" and entry["indices"].dtype == torch.int32
    assert torch.equal(decode_tensor(entry), t)


def test_non_float_tensors_are_stored_as_they_are():
    t = torch.tensor(7, dtype=torch.int64)  # BatchNorm's num_batches_tracked
    assert torch.equal(decode_tensor(encode_tensor(t)), t)


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99])
def test_exported_model_matches_the_pruned_model_exactly(tmp_path, sparsity):
    model = trained_pruned(sparsity)
    x = torch.randn(32, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    dense_size = save_dense(model, tmp_path / "dense.pt")
    sparse_size = save_sparse(model, tmp_path / "sparse.pt", meta={"sparsity": sparsity})
    for state in (
        torch.load(tmp_path / "dense.pt", weights_only=True),
        load_sparse(tmp_path / "sparse.pt"),
    ):
        fresh = small_cnn(seed=123).eval()
        fresh.load_state_dict(state)
        for key, value in model.state_dict().items():
            assert torch.equal(fresh.state_dict()[key], value), key
        with torch.no_grad():
            assert torch.equal(fresh(x), expected)
        assert sparsity_report(fresh).zeros == sparsity_report(model).zeros
    if sparsity >= 0.9:
        assert sparse_size < dense_size
        sizes = payload_bytes(model.state_dict())
        assert sizes["sparse"] < 0.3 * sizes["dense"]


def test_load_sparse_rejects_other_files(tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "plain.pt")
    with pytest.raises(ExportError, match="not a rewa sparse export"):
        load_sparse(tmp_path / "plain.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ExportError, match="cannot read"):
        load_sparse(tmp_path / "junk.pt")


def test_sparse_kernels_compute_the_same_function():
    model = trained_pruned(0.8)
    sparse, dense_left = sparse_inference_model(model)
    assert dense_left == []
    assert sum(type(m).__name__.startswith("Sparse") for m in sparse.modules()) == 3
    x = torch.randn(4, 3, 9, 7)  # odd sizes exercise the output-shape arithmetic
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), rtol=1e-5, atol=1e-6)


def test_grouped_convolutions_stay_dense():
    _, dense_left = sparse_inference_model(nn.Sequential(nn.Conv2d(4, 4, 1, groups=2)))
    assert dense_left == ["0"]
