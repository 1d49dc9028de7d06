"""The recipe: the objects a run's settings (:class:`vista.config.Params`) describe — Ray-free, for the
stages, the benchmarks and users' own loops alike.

- the network (:func:`build_model`; a trained one from its checkpoint: :func:`build_trained`,
  :func:`load_trained`) and which settings define it (:func:`model_differences`);
- the evaluation protocol (:func:`depth_protocol`, :func:`task_metrics`, :func:`model_max_depth`);
- the training parts (:func:`training_parts`: optimiser, schedule, loss with its class weights, the
  training stream);
- the names of runs and sweeps, from one settings digest (:func:`settings_digest`, :func:`run_name`,
  :func:`sweep_name`), and the metric a sweep ranks by (:func:`metric_and_mode`);
- what can fail before a run starts, checked in seconds (:func:`preflight`).

The evaluation protocol is resolved from the settings and the dataset's own conventions. Depth is measured
as the field does for each dataset: NYU Depth v2 inside the Eigen crop over 0.001–10 m, KITTI inside the
Garg crop over 0.001–80 m (the adapters' ``min_depth``, ``max_depth``, ``eval_crop``). Those values also cap
the depth head (``max_depth · σ``) unless ``model.max_depth`` is set, and they set the metrics unless
``eval.depth_range`` / ``eval.depth_crop`` are set.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .checkpoint import read_trained
from .config import Params, flatten
from .data.sources.base import source_class
from .engine import TimeBudget, build_optimizer, poly_schedule
from .losses import MultiTaskLoss, median_frequency_weights
from .metrics import TaskMetrics

# settings that do not change what a finished epoch means: a run with more epochs, another failure
# budget or other storage continues the same run
RUN_SECTIONS = ("model", "data", "shard", "loader", "train")
RUN_IGNORED = {"train": ("epochs", "max_failures", "storage_path", "keep_checkpoints", "run_name", "models_dir")}
# a sweep also depends on its search (not on how many trials, how many at once, or where they are stored)
SWEEP_SECTIONS = (*RUN_SECTIONS, "tune")
SWEEP_IGNORED = {"tune": ("num_samples", "max_concurrent_trials", "name", "out_dir", "storage_path")}


def settings_digest(
    params: Params, sections: Sequence[str] = RUN_SECTIONS, ignored: dict[str, Sequence[str]] = RUN_IGNORED
) -> str:
    """8 hex digits of the sha256 of the settings in ``sections``, less the ``ignored`` keys: the same
    settings give the same digest (it names runs and sweeps, so that a re-run resumes its own)."""
    tree = params.model_dump(mode="json", include=set(sections))
    for section, keys in ignored.items():
        for key in keys:
            tree[section].pop(key, None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:8]


def run_name(params: Params) -> str:
    """``<model>_<dataset>_<digest>`` (:func:`settings_digest`), or ``train.run_name`` when set: the same
    settings give the same name, so a re-run resumes its run; raising ``train.epochs`` continues a
    finished one."""
    if params.train.run_name:
        return params.train.run_name
    return f"{params.model.name}_{params.data.dataset}_{settings_digest(params)}"


def metric_and_mode(params: Params) -> tuple[str, str]:
    """The metric a sweep ranks its trials by and its direction: ``tune.metric``/``tune.mode``, else the
    training's ``train.best_metric``/``train.best_mode``."""
    return params.tune.metric or params.train.best_metric, params.tune.mode or params.train.best_mode


def sweep_name(params: Params) -> str:
    """``sweep_<model>_<digest>`` of everything a trial's results depend on (not the trial count), or
    ``tune.name`` when set."""
    if params.tune.name:
        return params.tune.name
    return f"sweep_{params.model.name}_{settings_digest(params, SWEEP_SECTIONS, SWEEP_IGNORED)}"


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


def build_model(params: Any) -> nn.Module:
    """The network that ``params.model`` (a :class:`vista.config.Params`) describes, randomly initialised
    (or with ImageNet weights when ``model.pretrained``)."""
    from vista.models import create_model

    m = params.model
    return create_model(
        m.name,
        tasks=m.tasks,
        num_classes=m.num_classes,
        max_depth=model_max_depth(params),
        pretrained=m.pretrained,
        output_stride=m.output_stride,
        grid=m.grid,
        width=m.width,
        decoder_channels=m.decoder_channels,
        aux_head=m.aux_head,
        input_scale=m.input_scale,
        attention=m.attention.overrides(),
    )


def build_trained(path: str | os.PathLike[str], state: dict[str, Any], params: Any) -> nn.Module:
    """The network of ``params`` with the checkpoint's weights, in eval mode."""
    model = build_model(params)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit the model in its params ({str(err)[:300]})") from None
    return model.eval()


def load_trained(path: str | os.PathLike[str]) -> tuple[nn.Module, Any]:
    """A trained model in eval mode and its :class:`vista.config.Params`, from a checkpoint that training
    wrote (``models/best.pt``: weights + the params they were trained with)."""
    state, params = read_trained(path)
    return build_trained(path, state, params), params


# model settings that only change how a trained network is run, not what it is
EVAL_TIME_MODEL_KEYS = frozenset({"input_scale", "pretrained"})


def model_differences(trained: Any, current: Any) -> dict[str, tuple[Any, Any]]:
    """``{setting: (trained value, current value)}`` for the settings that define the network and its
    outputs (``model.*`` but for :data:`EVAL_TIME_MODEL_KEYS`, and ``data.dataset``) where two
    :class:`vista.config.Params` disagree."""
    a = flatten(trained.model.model_dump(mode="json"), "model.")
    b = flatten(current.model.model_dump(mode="json"), "model.")
    a["data.dataset"], b["data.dataset"] = trained.data.dataset, current.data.dataset
    skip = {f"model.{k}" for k in EVAL_TIME_MODEL_KEYS}
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if k not in skip and a.get(k) != b.get(k)}


def seg_class_weights(params: Params, index: dict[str, Any]) -> list[float] | None:
    """The segmentation loss's class weights that ``train.class_weights`` asks for (``None``: unweighted).

    ``median_freq`` derives them from the class pixel counts the shard stage stored in ``shards.json``.
    """
    cw, k = params.train.class_weights, params.model.num_classes
    if cw == "none" or "seg" not in params.model.tasks:
        return None
    if isinstance(cw, tuple):
        if len(cw) != k:
            raise ValueError(f"train.class_weights has {len(cw)} values; model.num_classes is {k}")
        return list(cw)
    train = index["splits"].get("train", {})
    if "class_pixels" not in train:
        raise ValueError(
            "train.class_weights=median_freq: shards.json has no class statistics (shards written by an older "
            "version); re-run `vista shard`"
        )
    if len(train["class_pixels"]) != k:
        raise ValueError(f"shards.json counts {len(train['class_pixels'])} classes; model.num_classes is {k}")
    return median_frequency_weights(train["class_pixels"], train["class_image_pixels"])


def training_parts(
    params: Params,
    model: torch.nn.Module,
    shards: str,
    world: int = 1,
    budget: TimeBudget | None = None,
    index: dict[str, Any] | None = None,
) -> tuple[Any, ...]:
    """``(optimizer, schedule, loss, training stream, steps per epoch and rank)`` of a run — the same for
    the Ray Train workers and the bare loop of ``benchmarks/train.py``. With a ``budget`` the schedule
    follows its clock (``train.time_budget_s``); ``index``: the shards' ``shards.json`` when the caller
    has read it already."""
    from vista.data.transforms import TrainTransform
    from vista.data.webdata import load_index, train_loader

    t, ld = params.train, params.loader
    index = index if index is not None else load_index(shards)
    steps = -(-index["splits"]["train"]["samples"] // (world * t.batch_size))
    opt = build_optimizer(model, t.optimizer, t.lr, t.lr_mult, t.weight_decay, t.momentum, t.eps)
    sched = poly_schedule(opt, t.epochs * steps, t.poly_power, t.min_lr_ratio, t.warmup, budget)
    loss_fn = MultiTaskLoss(
        dict(t.loss_weights), params.data.ignore_index, t.aux_weight, t.normal_loss, seg_class_weights(params, index)
    )
    transform = TrainTransform(
        crop_size=ld.crop_size,
        scale_range=ld.scale_range,
        hflip=ld.hflip,
        color_jitter=ld.color_jitter,
        ignore_index=params.data.ignore_index,
    )
    data = train_loader(
        shards,
        t.batch_size,
        transform,
        num_workers=ld.num_workers,
        shuffle_buffer=ld.shuffle_buffer,
        seed=t.seed,
        on_bad_sample=params.data.on_bad_sample,
        pin_memory=next(model.parameters()).is_cuda,
        index=index,
    )
    return opt, sched, loss_fn, data, steps


def preflight(params: Params) -> None:
    """What can fail before Ray starts or an MLflow run opens, checked first: the metric that selects the
    best checkpoint, the splits, and the model itself (built without downloads and run once on a small
    input, so a bad name, kernel or dilation fails in seconds with the settings named)."""
    from vista.config import with_overrides
    from vista.metrics import check_metric_key

    check_metric_key(params.train.best_metric, params.model.tasks, "train.best_metric")
    if "train" not in params.data.splits or "val" not in params.data.splits:
        raise ValueError(f"data.splits={list(params.data.splits)}: training needs the train and val splits")
    if params.eval.split not in params.data.splits:
        raise ValueError(f"eval.split={params.eval.split!r} is not one of data.splits {list(params.data.splits)}")
    try:
        model = build_model(with_overrides(params, {"model.pretrained": False})).eval()
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"model.name={params.model.name!r} cannot be built from the model settings: {err}") from None
    size = params.loader.crop_size or (64, 96)
    size = (min(size[0], 128), min(size[1], 128))  # the architecture check, not a benchmark
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *size))
    except RuntimeError as err:
        raise ValueError(
            f"model.name={params.model.name!r} does not run with the model settings (input {size[0]}x{size[1]}): "
            f"{str(err).splitlines()[0]}"
        ) from None
