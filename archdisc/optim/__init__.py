"""Sparsity regularizers and the optimizers that use them.

Each optimizer param group carries its regularizer under the key ``reg`` (None: no
regularization), like ``lr``::

    opt = AdaBreg([{"params": [fc.weight, fc.bias], "reg": GroupL2(0.1)},
                   {"params": head.parameters()}], lr=1e-3)

Modules: ``regularizers`` (L1, GroupL2, KernelL2, TensorL2 and their prox), ``base``
(argument checks, the torch.compile plumbing, the shared optimizer base class),
``linbreg``, ``adabreg``, ``proxsgd`` (one optimizer each, with its kernels) and ``state``
(pickle-free optimizer state).
"""
from archdisc.optim.adabreg import AdaBreg
from archdisc.optim.linbreg import LinBreg
from archdisc.optim.proxsgd import ProxSGD
from archdisc.optim.regularizers import (L1, GroupL2, KernelL2, Regularizer, TensorL2,
                                         regularizer_from_config)
from archdisc.optim.state import optimizer_state_from_tensors, optimizer_state_to_tensors

__all__ = ["Regularizer", "L1", "GroupL2", "KernelL2", "TensorL2",
           "regularizer_from_config", "LinBreg", "AdaBreg", "ProxSGD",
           "optimizer_state_to_tensors", "optimizer_state_from_tensors"]
