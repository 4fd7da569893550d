"""Optimizers: ReWA and the baselines it is compared against."""

from rewa.optim.groups import param_groups
from rewa.optim.rewa import ReWA

__all__ = ["ReWA", "param_groups"]
