"""Datasets: synthetic sparse regression, CIFAR-10/100, ImageNet folders."""
