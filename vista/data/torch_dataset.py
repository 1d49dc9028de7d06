"""In-memory map-style datasets over sample sources, producing the model's batch format
(:mod:`vista.data.batch`)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from .batch import to_tensors
from .sources.synthetic import SPLIT_OFFSET, SyntheticConfig, render


class SyntheticDataset(Dataset[dict[str, torch.Tensor]]):
    """``count`` procedural scenes of ``split`` (``train`` or ``val``), rendered on access."""

    def __init__(self, cfg: SyntheticConfig, count: int, split: str = "train") -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split={split!r}: choose train or val")
        self.cfg, self.count = cfg, count
        self.offset = SPLIT_OFFSET[split]  # the same disjoint index ranges as the synthetic source

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < self.count:
            raise IndexError(i)
        return to_tensors(render(self.cfg, self.offset + i))
