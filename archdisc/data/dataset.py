"""The :class:`Data` container every dataset loader returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import TensorDataset

__all__ = ["Data"]


@dataclass
class Data:
    """A dataset ready for training: three splits plus what a model needs to know."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    in_shape: tuple[int, ...]
    out_dim: int
    task: str
    metric: str
    name: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        sizes = "/".join(str(len(s)) for s in (self.train, self.val, self.test))
        return (f"Data(name={self.name!r}, task={self.task!r}, metric={self.metric!r}, "
                f"in_shape={self.in_shape}, out_dim={self.out_dim}, train/val/test={sizes})")
