"""Experiments as commands: the demo, the sparse-regression study, CIFAR, ImageNet."""
