"""Evaluation metrics as torchmetrics ``Metric``s: their states are sums, so DDP reduction is exact.

Keys follow ``split/task/metric`` once prefixed by :func:`collect` (e.g. ``val/seg/miou``); the IoU of each
class is ``split/seg/iou/<class name>`` (e.g. ``val/seg/iou/sky``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix

from .data.batch import valid_depth


class SegMetrics(Metric):
    """mIoU (mean over classes present in prediction or target) and pixel accuracy, ignore index excluded;
    and the IoU of each class present, keyed ``iou/<class name>`` (class ids when no names are given)."""

    full_state_update = False

    def __init__(
        self, num_classes: int, ignore_index: int | None = 255, class_names: Sequence[str] | None = None
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.class_names = metric_class_names(class_names, num_classes)
        self.confmat = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index, validate_args=False)

    def update(self, logits: Tensor, target: Tensor) -> None:  # (B, K, H, W), (B, H, W)
        self.confmat.update(logits.argmax(1), target.long())

    def compute(self) -> dict[str, Tensor]:
        cm = self.confmat.compute().double()  # rows: target, cols: prediction
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        present = union > 0
        iou = tp[present] / union[present]
        total = cm.sum()
        nan = cm.new_tensor(math.nan)  # nothing labelled: no score, rather than a zero that looks real
        per_class = {f"iou/{self.class_names[k]}": tp[k] / union[k] for k in present.nonzero().flatten().tolist()}
        return {
            "miou": iou.mean() if present.any() else nan,
            "pixel_acc": tp.sum() / total if total > 0 else nan,
            **per_class,  # a class in neither targets nor predictions has no IoU (and no key)
        }

    def reset(self) -> None:
        super().reset()
        self.confmat.reset()

    def confusion_matrix(self) -> Tensor:
        return self.confmat.compute()


def metric_class_names(names: Sequence[str] | None, num_classes: int) -> list[str]:
    """One metric-key-safe name per class id: ``names`` (a dataset's classes) with characters MLflow refuses
    in a metric name replaced by ``_``; ids past the end of ``names`` (a model with more outputs than the
    dataset has classes) and unnamed classes are named by their id."""
    names = list(names or [])
    out = []
    for k in range(num_classes):
        name = re.sub(r"[^\w\-. ]", "_", str(names[k])).strip() if k < len(names) else ""
        out.append(name or str(k))
    if len(set(out)) < len(out):
        dup = sorted({n for n in out if out.count(n) > 1})
        raise ValueError(f"class names {dup} occur more than once (per-class metric keys must be unique): {names}")
    return out


# Standard evaluation crops, as fractions of the image (they scale with a resized image):
# Eigen et al. (NYU Depth v2, on 480×640: rows 45..470, cols 41..600) and Garg et al. (KITTI).
EVAL_CROPS: dict[str, tuple[float, float, float, float]] = {
    "eigen": (45 / 480, 471 / 480, 41 / 640, 601 / 640),
    "garg": (0.40810811, 0.99189189, 0.03594771, 0.96405229),
}


def eval_crop_mask(height: int, width: int, crop: str | None, device: torch.device | str = "cpu") -> Tensor:
    """Boolean (H, W) mask of the pixels inside the evaluation ``crop`` (``None``: every pixel).

    Raises:
        ValueError: unknown crop name.
    """
    mask = torch.ones(height, width, dtype=torch.bool, device=device)
    if crop is None or crop == "none":
        return mask
    if crop not in EVAL_CROPS:
        raise ValueError(f"depth evaluation crop {crop!r}: choose one of {sorted(EVAL_CROPS)} or none")
    top, bottom, left, right = EVAL_CROPS[crop]
    mask.zero_()
    mask[int(top * height) : int(bottom * height), int(left * width) : int(right * width)] = True
    return mask


class DepthMetrics(Metric):
    """Eigen-style depth metrics, computed per image over valid pixels and averaged over images.

    abs_rel, sq_rel, rmse, rmse_log, log10, silog (``100·sqrt(mean d² − (mean d)²)``, d = log ratio),
    d1–d3 (fraction with ``max(ŷ/y, y/ŷ) < 1.25^k``).

    The protocol of the field: a pixel counts when its ground truth lies in ``(min_depth, max_depth)``
    and inside the evaluation ``crop`` (``eigen`` for NYU, ``garg`` for KITTI); predictions are clamped
    to ``[min_depth, max_depth]`` first. Images without a valid pixel are skipped; when no image has one,
    every metric is NaN (never 0, which would read as a perfect score).
    """

    full_state_update = False
    names = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "d1", "d2", "d3")

    def __init__(self, min_depth: float = 1e-3, max_depth: float | None = None, crop: str | None = None) -> None:
        super().__init__()
        if max_depth is not None and max_depth <= min_depth:
            raise ValueError(f"depth range ({min_depth}, {max_depth}): max_depth must exceed min_depth")
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.crop = None if crop == "none" else crop
        eval_crop_mask(1, 1, self.crop)  # validates the name
        self.add_state("sums", default=torch.zeros(len(self.names), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:  # (B, 1, H, W) each
        region = eval_crop_mask(*target.shape[-2:], self.crop, target.device)
        hi = self.max_depth if self.max_depth is not None else math.inf
        for p, t in zip(pred.detach().double(), target.double(), strict=True):
            mask = valid_depth(t) & (t > self.min_depth) & (t < hi) & region
            if not mask.any():
                continue
            y, yh = t[mask], p[mask].clamp(self.min_depth, hi)
            d = torch.log(yh) - torch.log(y)
            ratio = torch.maximum(yh / y, y / yh)
            self.sums += torch.stack(
                [
                    ((yh - y).abs() / y).mean(),
                    ((yh - y).square() / y).mean(),
                    (yh - y).square().mean().sqrt(),
                    d.square().mean().sqrt(),
                    (torch.log10(yh) - torch.log10(y)).abs().mean(),
                    100 * (d.square().mean() - d.mean().square()).clamp_min(0).sqrt(),
                    (ratio < 1.25).double().mean(),
                    (ratio < 1.25**2).double().mean(),
                    (ratio < 1.25**3).double().mean(),
                ]
            )
            self.images += 1

    def compute(self) -> dict[str, Tensor]:
        if self.images == 0:
            return {n: self.sums.new_tensor(math.nan) for n in self.names}
        mean = self.sums / self.images
        return dict(zip(self.names, mean, strict=True))


class NormalMetrics(Metric):
    """Angular error of unit normals: mean, median (0.01° histogram), % within 11.25°, 22.5°, 30°."""

    full_state_update = False
    bin_deg = 0.01

    def __init__(self) -> None:
        super().__init__()
        n_bins = int(round(180 / self.bin_deg))
        self.add_state("hist", default=torch.zeros(n_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_deg", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:  # (B, 3, H, W) each
        mask = target.norm(dim=1) > 0.5
        p = torch.nn.functional.normalize(pred.detach().double(), dim=1)
        t = torch.nn.functional.normalize(target.double(), dim=1)
        deg = torch.rad2deg(torch.acos((p * t).sum(1).clamp(-1, 1)))[mask]
        idx = (deg / self.bin_deg).long().clamp_(0, self.hist.numel() - 1)
        self.hist += torch.bincount(idx, minlength=self.hist.numel()).double()
        self.sum_deg += deg.sum()

    def compute(self) -> dict[str, Tensor]:
        n = self.hist.sum()
        if n == 0:
            z = self.hist.new_tensor(math.nan)
            return {"mean": z, "median": z, "a11": z, "a22": z, "a30": z}
        cdf = self.hist.cumsum(0) / n
        median = (torch.searchsorted(cdf, cdf.new_tensor(0.5)).double() + 0.5) * self.bin_deg

        def within(deg: float) -> Tensor:
            return self.hist[: int(round(deg / self.bin_deg))].sum() / n

        return {
            "mean": self.sum_deg / n,
            "median": median,
            "a11": within(11.25),
            "a22": within(22.5),
            "a30": within(30.0),
        }


class TaskMetrics:
    """The metrics of every task of a model; ``update(pred, batch)`` then ``compute(split)``."""

    def __init__(
        self,
        tasks: tuple[str, ...],
        num_classes: int = 1,
        ignore_index: int = 255,
        max_depth: float | None = None,
        min_depth: float = 1e-3,
        depth_crop: str | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.metrics: dict[str, Metric] = {}
        if "depth" in tasks:
            self.metrics["depth"] = DepthMetrics(min_depth, max_depth, depth_crop)
        if "seg" in tasks:
            self.metrics["seg"] = SegMetrics(num_classes, ignore_index, class_names)
        if "normal" in tasks:
            self.metrics["normal"] = NormalMetrics()

    def to(self, device: torch.device | str) -> TaskMetrics:
        for m in self.metrics.values():
            m.to(device)
        return self

    def update(self, pred: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> None:
        for task, metric in self.metrics.items():
            metric.update(pred[task].float(), batch[task])

    def compute(self, split: str = "val") -> dict[str, float]:
        return collect({t: m.compute() for t, m in self.metrics.items()}, split)

    def reset(self) -> None:
        for m in self.metrics.values():
            m.reset()


def collect(results: Mapping[str, Mapping[str, Tensor]], split: str) -> dict[str, float]:
    """``{task: {metric: tensor}}`` -> ``{"split/task/metric": float}``."""
    return {f"{split}/{t}/{k}": float(v) for t, r in results.items() for k, v in r.items()}


# what each task reports (the ``metric`` of ``split/task/metric``)
METRIC_NAMES: dict[str, tuple[str, ...]] = {
    "depth": DepthMetrics.names,
    "seg": ("miou", "pixel_acc"),
    "normal": ("mean", "median", "a11", "a22", "a30"),
}


def check_metric_key(
    key: str, tasks: tuple[str, ...] | list[str], setting: str, splits: tuple[str, ...] = ("val",)
) -> None:
    """``key`` (``split/task/metric``) is one a model with ``tasks`` reports on ``splits``, else ``ValueError``
    naming ``setting`` and the keys it could be."""
    parts = key.split("/")
    ok = len(parts) == 3 and parts[0] in splits and parts[1] in tasks and parts[2] in METRIC_NAMES[parts[1]]
    if not ok:
        valid = [f"{s}/{t}/{m}" for s in splits for t in tasks for m in METRIC_NAMES[t]]
        raise ValueError(f"{setting}={key!r} is not a metric this model reports; choose one of {valid}")
