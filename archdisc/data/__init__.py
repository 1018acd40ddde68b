"""Datasets: built-in readers, the planted teacher, the user's files, metrics.

* :mod:`archdisc.data.builtin` -- :func:`load_data` of the built-in datasets by name;
* :mod:`archdisc.data.files` -- the IDX / CIFAR-10 readers and finding their files;
* :mod:`archdisc.data.teacher` -- the synthetic ``teacher`` dataset;
* :mod:`archdisc.data.user` -- the user's .npz / CSV / image folder, and the seeded split;
* :mod:`archdisc.data.metrics` -- accuracy, PSNR and :func:`evaluate`;
* :mod:`archdisc.data.dataset` -- the :class:`Data` every loader returns.
"""
from archdisc.data.builtin import NORMALISATION, available_datasets, load_data
from archdisc.data.dataset import Data
from archdisc.data.files import read_cifar_batch, read_idx
from archdisc.data.metrics import accuracy, evaluate, psnr
from archdisc.data.user import load_user_data
from archdisc.errors import DataError

__all__ = ["NORMALISATION", "Data", "DataError", "accuracy", "available_datasets", "evaluate",
           "load_data", "load_user_data", "psnr", "read_cifar_batch", "read_idx"]
