"""Sparsity regularizers and the optimizers that use them.

Each optimizer param group carries its regularizer under the key ``reg`` (None: no
regularization), like ``lr``::

    opt = AdaBreg([{"params": [fc.weight, fc.bias], "reg": GroupL2(0.1)},
                   {"params": head.parameters()}], lr=1e-3)
"""
from archdisc.optim.bregman import (AdaBreg, LinBreg, ProxSGD, optimizer_state_from_tensors,
                      optimizer_state_to_tensors)
from archdisc.optim.regularizers import (L1, GroupL2, KernelL2, Regularizer, TensorL2,
                           regularizer_from_config)

__all__ = ["Regularizer", "L1", "GroupL2", "KernelL2", "TensorL2",
           "regularizer_from_config", "LinBreg", "AdaBreg", "ProxSGD",
           "optimizer_state_to_tensors", "optimizer_state_from_tensors"]
