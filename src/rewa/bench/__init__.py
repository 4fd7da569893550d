"""Benchmarks of the optimizer step and of a full training step (``rewa bench optim|train``)."""
