"""ReWA under the idioms torch.optim users rely on: editing parameters through ``.data``,
torch.nn.utils.prune and parametrizations, GradScaler with autocast, state_dict round trips."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize, prune

import rewa
from rewa import ReWA
from rewa.optim._writes import (
    SPREAD_SAMPLES,
    differ,
    read_sample,
    record,
    sample_positions,
    written_since,
)


def linear_and_opt(momentum=0.0, detect_writes=True, seed=0):
    torch.manual_seed(seed)
    m = nn.Linear(100, 10)
    opt = ReWA(
        rewa.param_groups(m, weight_decay=1e-4),
        lr=0.1, K=9, M=2, momentum=momentum, detect_writes=detect_writes,
    )  # fmt: skip
    return m, opt


def step(m, opt, seed):
    gen = torch.Generator().manual_seed(seed)
    x, t = torch.randn(32, 100, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    opt.zero_grad()
    nn.functional.cross_entropy(m(x), t).backward()
    opt.step()


EDITS = {
    "data_setitem": lambda w: w.data.__setitem__((slice(None), slice(0, 50)), 0.0),
    "data_mul_": lambda w: w.data.mul_(torch.arange(100) >= 50),
    "data_rebind": lambda w: setattr(w, "data", w.data * (torch.arange(100) >= 50)),
    "no_grad_setitem": lambda w: _no_grad_zero(w),
}


def _no_grad_zero(w):
    with torch.no_grad():
        w[:, :50] = 0.0


@pytest.mark.parametrize("edit", list(EDITS))
def test_pruning_edits_survive_the_next_steps(edit):
    """The issue's example: zeros written into the weight (through .data, by rebinding, or under
    no_grad) are honored, as with torch.optim.SGD without momentum; M > 0 keeps them at 0."""
    m, opt = linear_and_opt()
    for s in range(3):
        step(m, opt, s)
    EDITS[edit](m.weight)
    for s in range(3, 8):
        step(m, opt, s)
    assert m.weight.detach()[:, :50].eq(0).all()
    assert m.weight.detach()[:, 50:].ne(0).all()
    assert opt.state[m.weight]["y"][:, :50].eq(0).all()


def test_untouched_weights_keep_their_exact_hidden_variable():
    """An edit re-derives y only where the parameter changed: every other entry of y keeps its
    exact value, even one too small for its x to be nonzero in float32 (re-deriving it from x
    would set it to 0 for good)."""
    m, opt = linear_and_opt()
    for s in range(3):
        step(m, opt, s)
    y = opt.state[m.weight]["y"]
    with torch.no_grad():  # an entry whose x underflows: y = 1e-6 gives x = 1e-54 -> 0
        y[0, 99] = 1e-6
        m.weight[0, 99] = 0.0
    opt._remember_writes([m.weight], opt.param_groups[0])  # as if the optimizer had written it
    before = y.clone()
    m.weight.data[:, :50] = 0.0
    opt.param_groups[0]["lr"] = 0.0  # the step only follows the edit
    step(m, opt, 3)
    assert torch.equal(y[:, 50:], before[:, 50:]) and y[0, 99] == 1e-6
    assert y[:, :50].eq(0).all()


def test_writes_through_data_are_ignored_without_detection():
    """detect_writes=False (what a loop that never writes .data may choose) restores the
    weights from y, as before: the documented cost of turning it off."""
    m, opt = linear_and_opt(detect_writes=False)
    step(m, opt, 0)
    m.weight.data[:, :50] = 0.0
    step(m, opt, 1)
    assert m.weight.detach()[:, :50].ne(0).all()
    opt.resync()  # the explicit way: y follows the parameter
    m.weight.data[:, :50] = 0.0
    opt.resync()
    step(m, opt, 2)
    assert m.weight.detach()[:, :50].eq(0).all()


def test_momentum_can_bring_a_zeroed_weight_back_unless_its_buffer_is_zeroed():
    """As with torch.optim.SGD: the momentum buffer still moves a weight zeroed by hand. Zeroing
    the buffer's entries too (what rewa.masks.Masks.apply_ does) keeps it at exactly 0."""
    m, opt = linear_and_opt(momentum=0.9)
    for s in range(3):
        step(m, opt, s)
    m.weight.data[:, :50] = 0.0
    step(m, opt, 3)
    assert m.weight.detach()[:, :50].ne(0).any()
    m.weight.data[:, :50] = 0.0
    opt.state[m.weight]["momentum_buffer"][:, :50] = 0.0
    for s in range(4, 8):
        step(m, opt, s)
    assert m.weight.detach()[:, :50].eq(0).all()


def test_torch_prune_trains_weight_orig_under_rewa_and_keeps_pruned_weights_at_zero():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 4))
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    groups = rewa.param_groups(model, weight_decay=1e-3)
    rewa_group = next(g for g in groups if g["name"] == "rewa")
    assert any(p is model[0].weight_orig for p in rewa_group["params"])
    opt = ReWA(groups, lr=0.05, K=3, M=2, momentum=0.9)
    mask = model[0].weight_mask.bool()
    before = model[0].weight_orig.detach().clone()
    x, t = torch.randn(64, 20), torch.randint(0, 4, (64,))
    for _ in range(20):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), t).backward()
        opt.step()
    assert model[0].weight.detach()[~mask].eq(0).all()
    assert not torch.equal(model[0].weight_orig.detach()[mask], before[mask])
    prune.remove(model[0], "weight")
    assert model[0].weight.detach()[~mask].eq(0).all()


class Mask(nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w):
        return w * self.mask


def test_parametrized_mask_trains_the_original_under_rewa():
    torch.manual_seed(0)
    lin = nn.Linear(20, 5)
    mask = torch.rand(5, 20) > 0.5
    parametrize.register_parametrization(lin, "weight", Mask(mask))
    original = lin.parametrizations.weight.original
    groups = rewa.param_groups(lin, weight_decay=1e-3)
    assert groups[0]["name"] == "rewa" and groups[0]["params"] == [original]
    opt = ReWA(groups, lr=0.05, K=3, M=2)
    x, t = torch.randn(64, 20), torch.randn(64, 5)
    for _ in range(10):
        opt.zero_grad()
        nn.functional.mse_loss(lin(x), t).backward()
        opt.step()
    assert lin.weight.detach()[~mask].eq(0).all() and lin.weight.detach()[mask].ne(0).all()


def test_gradscaler_with_bf16_autocast_on_the_cpu_skips_nonfinite_steps():
    """GradScaler + autocast on the CPU: unscale_ before clipping, a step with an inf gradient
    is skipped (weights and ReWA's state untouched), later steps train."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = ReWA(rewa.param_groups(model, weight_decay=1e-4), lr=0.05, K=3, M=2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    x, t = torch.randn(64, 16), torch.randint(0, 3, (64,))
    losses = []
    for i in range(15):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x).float(), t)
        scaler.scale(loss).backward()
        if i == 4:
            model[0].weight.grad[0, 0] = float("inf")
            before = [p.detach().clone() for p in model.parameters()]
            y_before = opt.state[model[0].weight]["y"].clone()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss.detach()))
        if i == 4:
            assert all(
                torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before, strict=True)
            )
            assert torch.equal(opt.state[model[0].weight]["y"], y_before)
            assert scaler.get_scale() == 2.0**7
    assert losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("channels_last", [False, True])
def test_data_edits_of_a_few_percent_of_a_large_tensor_are_seen(channels_last):
    """Writes through .data are found by comparing a fixed sample of positions with what the
    optimizer wrote: an edit of 2% of a 1.2M-entry weight (contiguous or channels_last) is seen;
    a single entry may not be, and resync() handles it."""
    torch.manual_seed(0)
    conv = nn.Conv2d(128, 256, 6)  # 1,179,648 weights
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
    opt = ReWA([conv.weight], lr=0.01, K=9, M=2, momentum=0.0, weight_decay=0.0)
    conv.weight.grad = torch.randn_like(conv.weight)
    opt.step()
    pruned = torch.rand(conv.weight.shape) < 0.02
    conv.weight.data[pruned] = 0.0
    conv.weight.grad = torch.randn_like(conv.weight)
    opt.step()
    assert conv.weight.detach()[pruned].eq(0).all()
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    conv.weight.data[0, 0, 0, 0] = 0.0  # may fall between the samples
    opt.resync()
    conv.weight.grad = torch.randn_like(conv.weight)
    opt.step()
    assert conv.weight.detach()[0, 0, 0, 0] == 0


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    changes=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 39)), max_size=4),
    nan=st.booleans(),
)
def test_differ_flags_exactly_the_tensors_with_a_changed_bit(sizes, changes, nan):
    gen = torch.Generator().manual_seed(len(sizes))
    dtypes = [torch.float32, torch.float64, torch.bfloat16]
    then = [torch.randn(n, generator=gen).to(dtypes[i % 3]) for i, n in enumerate(sizes)]
    if nan and sizes[0]:
        then[0][0] = float("nan")  # a NaN left alone is no change
    now = [t.clone() for t in then]
    for i, j in changes:
        if i < len(now) and j < now[i].numel():
            now[i][j] = -now[i][j] if now[i][j] != 0 else 1.0  # -0.0 differs from 0.0 in bits
    bits = {torch.bfloat16: torch.int16, torch.float32: torch.int32, torch.float64: torch.int64}
    expected = [
        not torch.equal(a.view(bits[a.dtype]), b.view(bits[b.dtype]))
        for a, b in zip(now, then, strict=True)
    ]
    assert differ(now, then) == expected


@settings(max_examples=200, deadline=None)
@given(shape=st.lists(st.integers(1, 3000), min_size=1, max_size=4))
def test_write_samples_are_distinct_positions_inside_the_tensor(shape):
    n = torch.Size(shape).numel()
    pos = sample_positions(tuple(shape), torch.device("cpu"))
    assert pos.unique().numel() == pos.numel() and torch.equal(pos, pos.sort().values)
    assert int(pos.min()) >= 0 and int(pos.max()) < n
    assert pos.numel() == n if n <= SPREAD_SAMPLES else pos.numel() <= SPREAD_SAMPLES + max(shape)


@settings(max_examples=200, deadline=None)
@given(shape=st.lists(st.integers(1, 5000), min_size=2, max_size=4))
def test_write_samples_meet_every_index_of_every_dimension(shape):
    """Every row, column, channel and kernel position holds a sample, for every shape of two or
    more dimensions (a vector's slices are single entries: it keeps the spread sample)."""
    pos = sample_positions(tuple(shape), torch.device("cpu"))
    for dim, index in enumerate(torch.unravel_index(pos, tuple(shape))):
        assert index.unique().numel() == shape[dim]


# Large shapes the first scheme covered only in part (rows 25%, 3.2%; columns 46%; channels 54%).
SLICE_SHAPES = [(4096, 1024), (32000, 512), (1000, 1000), (512, 512, 3, 3)]


@pytest.mark.parametrize("shape", SLICE_SHAPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_every_whole_slice_edit_of_a_large_tensor_is_seen(shape, channels_last):
    """Zeroing any one row, column or channel of a nonzero tensor is noticed (issue 33, D6)."""
    if channels_last and len(shape) != 4:
        pytest.skip("channels_last is a 4-d layout")
    gen = torch.Generator().manual_seed(0)
    w = torch.rand(shape, generator=gen) + 0.5
    if channels_last:
        w = w.to(memory_format=torch.channels_last)
    seen = record(w, detect=True)
    for dim, size in enumerate(shape):
        for index in [*torch.randint(size, (25,), generator=gen).tolist(), 0, size - 1]:
            saved = w.select(dim, index).clone()
            w.data.select(dim, index).zero_()  # through .data: the version counter stays
            assert written_since([w], [seen], detect=True) == [True], (dim, index)
            w.data.select(dim, index).copy_(saved)
            assert written_since([w], [seen], detect=True) == [False]


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_write_sample_reads_logical_positions_whatever_the_layout(channels_last):
    w = torch.randn(64, 32, 3, 3)
    if channels_last:
        w = w.to(memory_format=torch.channels_last)
    expected = w.reshape(-1)[sample_positions(tuple(w.shape), w.device)]
    assert torch.equal(read_sample(w), expected)


def test_an_edited_column_of_a_large_weight_survives_the_next_step():
    """The optimizer follows a pruned input column of a 1000 x 1000 weight (46% of columns were
    missed by the first sampling scheme)."""
    torch.manual_seed(0)
    lin = nn.Linear(1000, 1000, bias=False)
    opt = ReWA([lin.weight], lr=0.01, K=9, M=2, momentum=0.0, weight_decay=0.0)
    lin.weight.grad = torch.randn_like(lin.weight)
    opt.step()
    for col in (1, 2, 3, 500, 999):
        lin.weight.data[:, col] = 0.0
    lin.weight.grad = torch.randn_like(lin.weight)
    opt.step()
    assert lin.weight.detach()[:, [1, 2, 3, 500, 999]].eq(0).all()


@pytest.mark.parametrize("row", [0, 287, 575])
def test_an_edited_row_of_a_transformer_matrix_is_seen(row):
    """Zeroing one output unit through .data (the last one included) survives the next steps."""
    torch.manual_seed(0)
    lin = nn.Linear(192, 576)
    opt = ReWA([lin.weight], lr=0.01, K=9, M=2, momentum=0.0, weight_decay=0.0)
    for _ in range(2):
        lin.weight.grad = torch.randn_like(lin.weight)
        opt.step()
    lin.weight.data[row] = 0.0
    lin.weight.grad = torch.randn_like(lin.weight)
    opt.step()
    assert lin.weight.detach()[row].eq(0).all()
    assert opt.state[lin.weight]["y"][row].eq(0).all()
