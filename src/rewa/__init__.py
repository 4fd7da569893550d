"""rewa: sparse training with ReWA (Reparameterization, Weight decay, Adaptive learning rate)."""

from rewa import sparsity, theory
from rewa.optim import ReWA, param_groups
from rewa.sparsity import prune_, sparsity_report

__version__ = "0.1.0"

__all__ = ["ReWA", "__version__", "param_groups", "prune_", "sparsity", "sparsity_report", "theory"]
