"""Adapters for training loops rewa does not own: a transformers ``TrainerCallback``
(:mod:`rewa.integrations.transformers`) and a PyTorch Lightning ``Callback``
(:mod:`rewa.integrations.lightning`). Each logs the sparsity of the model's sparsified weights and,
given a target, runs the target-sparsity controller ``rewa train --target-sparsity`` uses
(:func:`rewa.control.for_optimizer`). Their frameworks are imported only by these modules
(``pip install 'rewa[integrations]'``)."""
