"""Paired transforms: the image and its targets move together.

Rules: RGB resizes bilinearly; depth, labels and normals resize with nearest neighbour, so invalid depth
(0) never blends into valid depth and labels stay labels; depth values are kept (metric); crops pad RGB
with 0, depth with 0 (invalid), labels with the ignore index, normals with (0, 0, 0); a horizontal flip
negates the normal's x component. Colour jitter touches RGB only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .batch import imagenet_normalize

TensorSample = dict[str, Tensor]


def _resize(s: TensorSample, size: tuple[int, int]) -> TensorSample:
    out = dict(s)
    out["rgb"] = F.interpolate(s["rgb"][None], size=size, mode="bilinear", align_corners=False)[0]
    # every target in one nearest-neighbour pass: (depth | normal | seg) stacked along channels
    names = [k for k in ("depth", "normal", "seg") if k in s]
    if names:
        parts = [s[k][None].float() if k == "seg" else s[k] for k in names]
        stacked = F.interpolate(torch.cat(parts)[None], size=size, mode="nearest-exact")[0]
        chunks = stacked.split([p.shape[0] for p in parts])
        for k, c in zip(names, chunks, strict=True):
            out[k] = c[0].to(s["seg"].dtype) if k == "seg" else c
    return out


def _crop(s: TensorSample, top: int, left: int, size: tuple[int, int], ignore_index: int) -> TensorSample:
    """Crop (padding first where the crop leaves the image)."""
    h, w = s["rgb"].shape[-2:]
    ch, cw = size
    pad_b, pad_r = max(0, top + ch - h), max(0, left + cw - w)
    out = {}
    if (pad_b or pad_r) and "seg" in s and s["seg"].dtype == torch.uint8 and ignore_index > 255:
        s = {**s, "seg": s["seg"].int()}
    for k, v in s.items():
        if pad_b or pad_r:
            fill = float(ignore_index) if k == "seg" else 0.0
            v = F.pad(v[None] if k == "seg" else v, (0, pad_r, 0, pad_b), value=fill)
            v = v[0] if k == "seg" else v
        out[k] = v[..., top : top + ch, left : left + cw]
    return out


def _hflip(s: TensorSample) -> TensorSample:
    out = {k: v.flip(-1) for k, v in s.items()}
    if "normal" in out:
        out["normal"] = out["normal"].clone()
        out["normal"][0] = -out["normal"][0]  # mirrored surfaces face the other way in x
    return out


@dataclass
class TrainTransform:
    """Random scale, random crop, horizontal flip and colour jitter, on a sample of tensors
    (RGB as uint8 (3, H, W), the fast path, or float in [0, 1]); returns RGB as float in [0, 1].

    Args:
        crop_size: output (H, W); ``None`` keeps the input size.
        scale_range: the image is resized by a factor drawn uniformly from this range.
        hflip: flip with probability 0.5.
        color_jitter: brightness/contrast/saturation factors drawn from ``1 ± color_jitter``.
        ignore_index: label written into padded pixels.
        generator: RNG (per worker); ``None`` uses torch's global RNG.
    """

    crop_size: tuple[int, int] | None = None
    scale_range: tuple[float, float] = (0.75, 1.5)
    hflip: bool = True
    color_jitter: float = 0.2
    ignore_index: int = 255
    generator: torch.Generator | None = None

    def _u(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.generator))

    def __call__(self, s: TensorSample) -> TensorSample:
        h, w = s["rgb"].shape[-2:]
        out_size = tuple(self.crop_size) if self.crop_size is not None else (h, w)
        scale = self._u(*self.scale_range)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        top = int(torch.randint(0, max(1, size[0] - out_size[0] + 1), (), generator=self.generator))
        left = int(torch.randint(0, max(1, size[1] - out_size[1] + 1), (), generator=self.generator))
        if size[0] >= out_size[0] and size[1] >= out_size[1]:
            # crop the source window that the output covers, then resize only that: work ∝ output size
            sy, sx = min(h - 1, int(top / scale)), min(w - 1, int(left / scale))
            sh = max(1, min(h - sy, round(out_size[0] / scale)))
            sw = max(1, min(w - sx, round(out_size[1] / scale)))
            s = _crop(s, sy, sx, (sh, sw), self.ignore_index)
            if (sh, sw) != out_size:
                s = _resize(s, out_size)
        else:  # the scaled image is smaller than the crop: resize all of it, then pad
            if size != (h, w):
                s = _resize(s, size)
            s = _crop(s, top, left, out_size, self.ignore_index)
        if self.hflip and self._u(0, 1) < 0.5:
            s = _hflip(s)
        s = dict(s)
        if s["rgb"].dtype == torch.uint8:
            s["rgb"] = s["rgb"].float() / 255.0  # geometry ran on uint8 (fast); colour runs on float (fast)
        if self.color_jitter > 0:
            s["rgb"] = _jitter(s["rgb"], self.color_jitter, self._u)
        return s


def _jitter(rgb: Tensor, amount: float, u: Callable[[float, float], float]) -> Tensor:
    """Brightness, contrast, saturation on an RGB tensor (uint8, or float in [0, 1])."""
    from torchvision.transforms.v2 import functional as TF

    rgb = TF.adjust_brightness(rgb, u(1 - amount, 1 + amount))
    rgb = TF.adjust_contrast(rgb, u(1 - amount, 1 + amount))
    return TF.adjust_saturation(rgb, u(1 - amount, 1 + amount))


def normalize_rgb(s: TensorSample) -> TensorSample:
    """RGB uint8 (or float in [0, 1]) -> ImageNet-normalised float (the model's input)."""
    return {**s, "rgb": imagenet_normalize(s["rgb"])}
