"""The baselines ReWA is compared against, as components that work on any ``nn.Module``.

- :mod:`rewa.baselines.penalties`: ℓ1 (subgradient) and direct ℓp penalties, and a
  :class:`~rewa.baselines.penalties.StabilityMonitor` that makes ℓp's instability visible.
- :class:`rewa.optim.prox.ProxL1`: ℓ1 by a proximal step (soft threshold, exact zeros).
- :mod:`rewa.baselines.spred`: Spred, the Hadamard reparameterization x = u ⊙ v.
- :mod:`rewa.baselines.str_`: STR, soft-threshold reparameterization with a learnable threshold.
- :mod:`rewa.baselines.gmp`: gradual magnitude pruning with the cubic schedule.

Each is also a :class:`rewa.methods.SparseMethod`, selected by name with ``build_method``.
"""
