"""The batch format every reader produces and the model, losses and metrics consume, with its helpers.

- ``rgb`` float (3, H, W) normalised with ImageNet statistics (:func:`imagenet_normalize`; back to uint8 for
  display: :func:`vista.visualize.denormalize`);
- ``depth`` float (1, H, W) in metres, invalid pixels 0 (:func:`valid_depth` marks the usable ones);
- ``seg`` uint8 or int64 class ids (H, W); ``normal`` float (3, H, W);
- ``skipped`` (:data:`SKIPPED`): the names of the samples a loader dropped since the previous batch
  (``data.on_bad_sample: skip``), which :mod:`vista.engine` counts.

:func:`to_tensors` turns a numpy sample of a source into this format.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
SKIPPED = "skipped"  # a batch's list of the samples a loader dropped (data.on_bad_sample: skip)


def imagenet_normalize(rgb: Tensor) -> Tensor:
    """RGB (3, H, W) or (N, 3, H, W), uint8 or float in [0, 1] -> ImageNet-normalised float (the model's
    input)."""
    x = rgb.float() / 255.0 if rgb.dtype == torch.uint8 else rgb
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def valid_depth(target: Tensor) -> Tensor:
    """Pixels with a usable depth: finite and > 0 (0 and inf mark missing measurements)."""
    return torch.isfinite(target) & (target > 0)


def to_tensors(sample: dict[str, Any], normalize: bool = True) -> dict[str, Tensor]:
    """Numpy sample (HWC uint8 rgb, metric depth, class ids, normals) -> model tensors.

    ``normalize=False`` keeps RGB as uint8 (3, H, W): paired transforms run faster on it (see
    :func:`vista.data.transforms.normalize_rgb` for the final step)."""
    rgb8 = torch.from_numpy(np.ascontiguousarray(sample["rgb"])).permute(2, 0, 1)
    out = {"rgb": imagenet_normalize(rgb8) if normalize else rgb8.contiguous()}
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
