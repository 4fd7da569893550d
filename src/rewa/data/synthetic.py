"""The synthetic sparse-regression problem of METHOD.md: y = Xβ + σξ with a k-sparse β."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SparseRegression:
    """Train/validation/test splits of one sparse linear regression problem (float32 tensors)."""

    beta: Tensor  # (d,) ground truth, k nonzeros
    X_train: Tensor
    y_train: Tensor
    X_val: Tensor
    y_val: Tensor
    X_test: Tensor
    y_test: Tensor
    noise: float

    @property
    def d(self) -> int:
        return self.beta.numel()

    @property
    def support(self) -> Tensor:
        return self.beta != 0


def _design(n: int, d: int, correlation: float, gen: torch.Generator) -> Tensor:
    """N(0, 1) rows; with correlation ρ > 0, an AR(1) design: corr(x_i, x_j) = ρ^|i−j|."""
    z = torch.randn(n, d, generator=gen)
    if correlation == 0.0:
        return z
    x = torch.empty_like(z)
    x[:, 0] = z[:, 0]
    scale = (1.0 - correlation**2) ** 0.5
    for j in range(1, d):
        x[:, j] = correlation * x[:, j - 1] + scale * z[:, j]
    return x


def make_sparse_regression(
    d: int = 2000,
    n: int = 400,
    k: int = 10,
    *,
    noise: float = 1.0,
    n_val: int = 0,
    n_test: int = 2000,
    correlation: float = 0.0,
    magnitude: float = 1.0,
    random_signs: bool = True,
    seed: int = 0,
) -> SparseRegression:
    """Draw one problem: X with i.i.d. N(0,1) entries (or AR(1)-correlated columns), k nonzero
    coefficients of size ``magnitude`` (random signs) at random positions, σ = ``noise``.

    ``n`` training rows, plus ``n_val`` validation and ``n_test`` test rows from the same law.
    """
    if not (1 <= k <= d) or n < 1 or noise < 0 or not 0.0 <= correlation < 1.0:
        raise ValueError(
            f"need 1 <= k <= d, n >= 1, noise >= 0, 0 <= correlation < 1; "
            f"got d={d}, n={n}, k={k}, noise={noise}, correlation={correlation}"
        )
    gen = torch.Generator().manual_seed(seed)
    beta = torch.zeros(d)
    support = torch.randperm(d, generator=gen)[:k]
    signs = torch.where(torch.rand(k, generator=gen) < 0.5, -1.0, 1.0) if random_signs else 1.0
    beta[support] = magnitude * signs
    X = _design(n + n_val + n_test, d, correlation, gen)
    y = X @ beta + noise * torch.randn(X.shape[0], generator=gen)
    cut = (n, n + n_val)
    return SparseRegression(
        beta,
        X[: cut[0]],
        y[: cut[0]],
        X[cut[0] : cut[1]],
        y[cut[0] : cut[1]],
        X[cut[1] :],
        y[cut[1] :],
        noise,
    )


def make_sparse_logistic(
    d: int = 1000,
    n: int = 1000,
    *,
    coefficients: tuple[float, ...] = (1.0, 0.5),
    n_val: int = 0,
    n_test: int = 2000,
    seed: int = 0,
) -> SparseRegression:
    """Sparse logistic regression (the authors' second synthetic task): X with i.i.d. N(0,1)
    entries, β = (1, 0.5, 0, ..., 0), labels y ~ Bernoulli(σ(Xβ)) in {0, 1}, no bias.
    ``noise`` is 0: the randomness is in the labels."""
    if not 1 <= len(coefficients) <= d or n < 1:
        raise ValueError(f"need 1 <= len(coefficients) <= d and n >= 1, got d={d}, n={n}")
    gen = torch.Generator().manual_seed(seed)
    beta = torch.zeros(d)
    beta[: len(coefficients)] = torch.tensor(coefficients)
    X = torch.randn(n + n_val + n_test, d, generator=gen)
    y = torch.bernoulli(torch.sigmoid(X @ beta), generator=gen)
    cut = (n, n + n_val)
    return SparseRegression(
        beta, X[: cut[0]], y[: cut[0]], X[cut[0] : cut[1]], y[cut[0] : cut[1]],
        X[cut[1] :], y[cut[1] :], 0.0,
    )  # fmt: skip
