"""In-memory map-style datasets over sample sources, producing the model's batch format.

Batch format: ``rgb`` float (3, H, W) normalised with ImageNet statistics, ``depth`` float (1, H, W)
in metres (0 = invalid), ``seg`` uint8 or int64 class ids (H, W), ``normal`` float (3, H, W).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .sources.synthetic import SPLIT_OFFSET, SyntheticConfig, render

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def to_tensors(sample: dict[str, Any], normalize: bool = True) -> dict[str, torch.Tensor]:
    """Numpy sample (HWC uint8 rgb, metric depth, class ids, normals) -> model tensors.

    ``normalize=False`` keeps RGB as uint8 (3, H, W): paired transforms run faster on it (see
    :func:`vista.data.transforms.normalize_rgb` for the final step)."""
    rgb8 = torch.from_numpy(np.ascontiguousarray(sample["rgb"])).permute(2, 0, 1)
    out = {"rgb": (rgb8.float() / 255.0 - IMAGENET_MEAN) / IMAGENET_STD if normalize else rgb8.contiguous()}
    if "depth" in sample:
        depth = torch.from_numpy(np.asarray(sample["depth"], dtype=np.float32))
        out["depth"] = torch.where(torch.isfinite(depth), depth, torch.zeros_like(depth))[None]
    if "seg" in sample:
        seg = np.asarray(sample["seg"])
        # uint8 ids stay uint8 (4x less to move between loader processes); losses and metrics take .long()
        out["seg"] = torch.from_numpy(seg if seg.dtype == np.uint8 else seg.astype(np.int64))
    if "normal" in sample:
        out["normal"] = torch.from_numpy(np.asarray(sample["normal"], dtype=np.float32)).permute(2, 0, 1)
    return out


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
