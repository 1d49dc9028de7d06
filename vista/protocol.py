"""The evaluation protocol of a run, resolved from the settings and the dataset's own conventions.

Depth is measured as the field does for each dataset: NYU Depth v2 inside the Eigen crop over
0.001–10 m, KITTI inside the Garg crop over 0.001–80 m (the adapters' ``min_depth``, ``max_depth``,
``eval_crop``). Those values also cap the depth head (``max_depth · σ``) unless ``model.max_depth`` is set,
and they set the metrics unless ``eval.depth_range`` / ``eval.depth_crop`` are set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .data.sources.base import source_class
from .metrics import TaskMetrics

if TYPE_CHECKING:
    from .config import Params

DEFAULT_MAX_DEPTH = 10.0  # datasets without a depth cap of their own (and without depth)


@dataclass(frozen=True)
class DepthProtocol:
    min_depth: float
    max_depth: float
    crop: str | None  # "eigen", "garg" or None


def model_max_depth(params: Params) -> float:
    """``model.max_depth``, or the dataset's depth cap when it is null."""
    if params.model.max_depth is not None:
        return params.model.max_depth
    return source_class(params.data.dataset).max_depth or DEFAULT_MAX_DEPTH


def depth_protocol(params: Params) -> DepthProtocol:
    """Range and crop of the depth metrics: ``eval.depth_range`` / ``eval.depth_crop``, else the dataset's."""
    src = source_class(params.data.dataset)
    if params.eval.depth_range is not None:
        lo, hi = params.eval.depth_range
    else:
        lo, hi = src.min_depth, src.max_depth or model_max_depth(params)
    crop = params.eval.depth_crop if params.eval.depth_crop is not None else src.eval_crop
    return DepthProtocol(float(lo), float(hi), None if crop == "none" else crop)


def task_metrics(params: Params, class_names: Sequence[str] | None = None) -> TaskMetrics:
    """The metrics of every task of ``params.model``, under the run's evaluation protocol; per-class
    segmentation metrics carry ``class_names`` (the shard index's ``classes``), else class ids."""
    d = depth_protocol(params)
    m = params.model
    return TaskMetrics(m.tasks, m.num_classes, params.data.ignore_index, d.max_depth, d.min_depth, d.crop, class_names)
