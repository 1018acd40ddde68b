"""Datasets: built-in readers, the planted teacher, the user's files, metrics."""
from archdisc.data.core import (NORMALISATION, Data, DataError, accuracy, available_datasets,
                                evaluate, load_data, load_user_data, psnr, read_cifar_batch,
                                read_idx)

__all__ = ["NORMALISATION", "Data", "DataError", "accuracy", "available_datasets", "evaluate",
           "load_data", "load_user_data", "psnr", "read_cifar_batch", "read_idx"]
