"""Predictions as images people can compare by eye: colourised depth, segmentation overlays, normals as RGB.

Used for sample predictions in experiment tracking and by prediction tools. Inputs are single images
(no batch dimension) as tensors or arrays; outputs are uint8 H×W×3 arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib import colormaps

from .data.batch import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from .config import Params

ArrayLike = np.ndarray | torch.Tensor


def _np(x: ArrayLike) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def denormalize(rgb: ArrayLike) -> np.ndarray:
    """Model input (3, H, W), ImageNet-normalised -> uint8 H×W×3."""
    x = torch.as_tensor(_np(rgb)) * IMAGENET_STD + IMAGENET_MEAN
    return (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def colorize_depth(depth: ArrayLike, max_depth: float | None = None, cmap: str = "magma_r") -> np.ndarray:
    """Depth (H, W) or (1, H, W) in metres -> uint8 H×W×3; invalid pixels (≤ 0, not finite) are black.

    Args:
        max_depth: the depth mapped to the end of the colour map; default: the 99th percentile of valid pixels.
    """
    d = _np(depth)
    d = d[0] if d.ndim == 3 else d  # (1, H, W) -> (H, W)
    valid = np.isfinite(d) & (d > 0)
    top = max_depth if max_depth is not None else (np.percentile(d[valid], 99) if valid.any() else 1.0)
    x = np.clip(np.where(valid, d, 0) / max(top, 1e-6), 0, 1)
    rgb = (colormaps[cmap](x)[..., :3] * 255 + 0.5).astype(np.uint8)
    rgb[~valid] = 0
    return rgb


def palette(num_classes: int) -> np.ndarray:
    """A fixed, distinct colour per class id (num_classes × 3 uint8)."""
    cmap = colormaps["tab20"]
    return np.array([np.array(cmap(i % 20)[:3]) * 255 for i in range(num_classes)], dtype=np.uint8)


def colorize_seg(
    labels: ArrayLike, num_classes: int, image: np.ndarray | None = None, alpha: float = 0.5, ignore_index: int = 255
) -> np.ndarray:
    """Class ids (H, W) — or logits (K, H, W) — -> uint8 H×W×3 colours, blended over ``image`` if given.

    Ids outside ``range(num_classes)`` (void / ignore) are black, or show the image unchanged.
    """
    x = _np(labels)
    ids = x.argmax(0) if x.ndim == 3 else x.astype(np.int64)
    known = (ids >= 0) & (ids < num_classes) & (ids != ignore_index)
    colours = np.zeros((*ids.shape, 3), np.uint8)
    colours[known] = palette(num_classes)[ids[known]]
    if image is None:
        return colours
    out = image.astype(np.float32)
    out[known] = (1 - alpha) * out[known] + alpha * colours[known]
    return (out + 0.5).astype(np.uint8)


def colorize_normals(normal: ArrayLike) -> np.ndarray:
    """Unit normals (3, H, W) -> uint8 H×W×3 with RGB = (n + 1) / 2; zero vectors (no normal) are black."""
    n = _np(normal)
    valid = np.linalg.norm(n, axis=0) > 0.5
    rgb = ((np.clip(n, -1, 1) + 1) / 2 * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)
    rgb[~valid] = 0
    return rgb


def panel(images: list[np.ndarray]) -> np.ndarray:
    """Images of one height side by side (uint8 H×ΣW×3)."""
    return np.concatenate(images, axis=1)


def first_batch(loader: Any) -> dict[str, Any]:
    """The first batch that holds samples (with ``data.on_bad_sample: skip`` one may hold only the names
    of dropped samples)."""
    for batch in loader:
        if "rgb" in batch:
            return batch
    raise ValueError("the val split has no usable sample")


@torch.no_grad()
def prediction_panels(model: torch.nn.Module, batch: dict[str, Any], params: Params) -> list[np.ndarray]:
    """One uint8 image per sample: the input, then prediction and ground truth of each task."""
    from .recipe import model_max_depth

    model.eval()
    pred = model(batch["rgb"])
    m = params.model
    cap = model_max_depth(params)
    rows = []
    for i in range(batch["rgb"].shape[0]):
        image = denormalize(batch["rgb"][i])
        row = [image]
        if "depth" in pred:
            row += [colorize_depth(pred["depth"][i], cap), colorize_depth(batch["depth"][i], cap)]
        if "seg" in pred:
            row += [
                colorize_seg(pred["seg"][i], m.num_classes, image),
                colorize_seg(batch["seg"][i], m.num_classes, image),
            ]
        if "normal" in pred:
            row += [colorize_normals(pred["normal"][i]), colorize_normals(batch["normal"][i])]
        rows.append(panel(row))
    return rows


def save_samples(model: torch.nn.Module, shards: str, params: Params, path: Path, n: int = 4) -> None:
    """The prediction panels of the first ``n`` val images, stacked, as a PNG."""
    from PIL import Image

    from .data.webdata import eval_loader

    batch = first_batch(eval_loader(shards, "val", n, on_bad_sample=params.data.on_bad_sample))
    Image.fromarray(np.concatenate(prediction_panels(model, batch, params), axis=0)).save(path)
