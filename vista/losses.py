"""Task losses: SILog for depth, cross-entropy (+ aux) for segmentation, angular loss for normals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data.batch import valid_depth


def silog_loss(pred: Tensor, target: Tensor, variance_focus: float = 0.85, scale: float = 10.0) -> Tensor:
    """``scale · sqrt(mean d² − λ (mean d)²)``, ``d = log pred − log target`` over valid pixels.

    Args:
        pred: predicted depth (B, 1, H, W), positive.
        target: ground truth (B, 1, H, W); invalid pixels are 0, negative, NaN or inf.
    """
    mask = valid_depth(target)
    if not mask.any():
        return pred.sum() * 0.0  # keeps the graph (DDP needs every rank to backpropagate)
    d = torch.log(pred[mask].clamp_min(1e-6)) - torch.log(target[mask])
    return scale * torch.sqrt((d.square().mean() - variance_focus * d.mean().square()).clamp_min(1e-12))


def normal_loss(pred: Tensor, target: Tensor, kind: str = "acos") -> Tensor:
    """Angular loss between unit normals (B, 3, H, W); pixels whose target has zero norm are ignored.

    ``acos``: mean angle in radians (cosine clamped away from ±1 so the gradient stays finite);
    ``cosine``: mean ``1 − cos``.
    """
    mask = target.norm(dim=1) > 0.5  # (B, H, W)
    if not mask.any():
        return pred.sum() * 0.0
    cos = (F.normalize(pred, dim=1) * F.normalize(target, dim=1)).sum(1)[mask]
    if kind == "acos":
        return torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6)).mean()
    if kind == "cosine":
        return (1 - cos).mean()
    raise ValueError(f"normal_loss kind={kind!r}: choose acos or cosine")


class MultiTaskLoss(nn.Module):
    """Weighted sum of the task losses; returns ``(total, {task: value})``.

    Args:
        weights: per-task weight (tasks missing from the predictions are skipped).
        ignore_index: label id ignored by the segmentation loss.
        aux_weight: weight of the ``seg_aux`` cross-entropy when the model returns it.
        normal_kind: ``acos`` or ``cosine``.
        class_weights: per-class weights of the segmentation cross-entropy (e.g.
            :func:`median_frequency_weights`); ``None`` weighs every pixel alike.
    """

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        ignore_index: int = 255,
        aux_weight: float = 0.2,
        normal_kind: str = "acos",
        class_weights: Sequence[float] | Tensor | None = None,
    ) -> None:
        super().__init__()
        self.weights = dict(weights or {"depth": 1.0, "seg": 1.0, "normal": 1.0})
        self.ignore_index = ignore_index
        self.aux_weight = aux_weight
        self.normal_kind = normal_kind
        cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", cw, persistent=False)

    def _ce(self, logits: Tensor, seg: Tensor) -> Tensor:
        if not (seg != self.ignore_index).any():
            return logits.sum() * 0.0  # every pixel ignored: no signal, but keep the graph
        w = None if self.class_weights is None else self.class_weights.to(logits.device)
        return F.cross_entropy(logits.float(), seg, weight=w, ignore_index=self.ignore_index)

    def forward(self, pred: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        parts: dict[str, Tensor] = {}
        if "depth" in pred:
            parts["depth"] = silog_loss(pred["depth"].float(), batch["depth"])
        if "seg" in pred:
            seg = batch["seg"].long()
            parts["seg"] = self._ce(pred["seg"], seg)
            if "seg_aux" in pred and self.aux_weight > 0:
                parts["seg_aux"] = self._ce(pred["seg_aux"], seg)
        if "normal" in pred:
            parts["normal"] = normal_loss(pred["normal"].float(), batch["normal"], self.normal_kind)
        total = sum((self.aux_weight if k == "seg_aux" else self.weights.get(k, 1.0)) * v for k, v in parts.items())
        return total, {k: v.detach() for k, v in parts.items()}  # type: ignore[return-value]


def median_frequency_weights(class_pixels: Sequence[int], image_pixels: Sequence[int]) -> list[float]:
    """Median-frequency balancing (Eigen & Fergus, 2015): ``w_c = median(f) / f_c`` with
    ``f_c = pixels of class c / labelled pixels of the images where c appears``.

    Args:
        class_pixels: pixels of each class over the training split.
        image_pixels: per class, the labelled pixels of the training images that contain it.

    Returns:
        One weight per class; a class absent from the split gets 1.0 (it never meets the loss).

    Raises:
        ValueError: the two lists differ in length, or no class has any pixel.
    """
    if len(class_pixels) != len(image_pixels):
        raise ValueError(f"class statistics disagree: {len(class_pixels)} classes vs {len(image_pixels)}")
    freq = [c / n if c > 0 and n > 0 else None for c, n in zip(class_pixels, image_pixels, strict=True)]
    present = sorted(f for f in freq if f is not None)
    if not present:
        raise ValueError("class statistics hold no labelled pixel: cannot compute median-frequency weights")
    mid = len(present) // 2
    median = present[mid] if len(present) % 2 else (present[mid - 1] + present[mid]) / 2
    return [median / f if f is not None else 1.0 for f in freq]
