"""Typed settings over ``params.yaml``, the single source of every setting.

``load_params(path, overrides, profile)`` reads the file, applies a profile (a named set of dotted
overrides stored in the file, e.g. ``smoke``) and then ``key.sub=value`` overrides, and validates the
result. Unknown keys and bad values raise :class:`ParamsError` naming the key and the value.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .data.sources.base import DATASETS

Task = Literal["depth", "seg", "normal"]
_Side = Annotated[int, Field(ge=16, le=4096)]  # an image or crop side in pixels
PROFILE_ENV = "VISTA_PROFILE"
# set by DVC in a stage command's environment: the project's root, also while a queued or --temp experiment
# runs the command in a temporary copy of the project (under .dvc/tmp/exps)
DVC_ROOT_ENV = "DVC_ROOT"


def project_path(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute: a relative one is taken from ``$DVC_ROOT`` when DVC runs the command, else
    from the working directory.

    For what lives beside the project but is none of DVC's outputs (the MLflow database, Ray's checkpoints):
    a DVC experiment run in a temporary copy of the project keeps them in the project, where the workspace
    runs keep theirs, not in the copy DVC deletes afterwards.
    """
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = Path(os.environ.get(DVC_ROOT_ENV) or ".") / p
    return p.resolve()


class ParamsError(ValueError):
    """A settings file, profile or override is invalid; the message names the key and value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # inf/NaN fail here, not at step 1


class AttentionParams(_Strict):
    """Overrides of the model's attention preset; ``None`` keeps the preset's value."""

    rank: int | None = Field(None, ge=0)
    inference_iters: int | None = Field(None, ge=1)
    mf_iters: int | None = Field(None, ge=1)
    channel_init: Literal["uniform", "learned", "random"] | None = None
    eval_draws: Literal["fixed", "fresh"] | None = None
    draws_on: Literal["cpu", "device"] | None = None
    channel_prior: bool | None = None
    sample_channels: bool | None = None
    dilations: tuple[int, ...] | None = None
    kernel_size: int | None = Field(None, ge=1)
    width: int | None = Field(None, ge=1)
    senders: tuple[str, ...] | None = None
    receivers: tuple[str, ...] | None = None
    tau_m: float | None = Field(None, gt=0)
    tau_v: float | None = Field(None, gt=0)

    @field_validator("dilations")
    @classmethod
    def _dilations(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (not v or min(v) < 1):
            raise ValueError("need one or more dilations, each >= 1")
        return v

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class ModelParams(_Strict):
    name: str = "vista_r18"
    tasks: tuple[Task, ...] = ("depth", "seg", "normal")
    num_classes: int = Field(12, ge=1)
    max_depth: float | None = Field(None, gt=0)  # None: the dataset's depth cap (NYU 10 m, KITTI 80 m)
    pretrained: bool = False
    output_stride: Literal[8, 16, 32] | None = None
    grid: Literal["c2", "c3"] | None = None  # the feature grid the neck works on; None: the model's
    width: int | None = Field(None, ge=1)
    decoder_channels: int | None = Field(None, ge=1)
    aux_head: bool = True
    input_scale: float | None = Field(None, gt=0, le=4)  # inference: the network sees its input resized by this
    attention: AttentionParams = AttentionParams()

    @field_validator("tasks")
    @classmethod
    def _tasks_unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or len(set(v)) != len(v):
            raise ValueError("need at least one task, each once")
        return v


DatasetName = Literal[DATASETS]  # type: ignore[valid-type]  # Literal["synthetic", "camvid", ...]


class DataParams(_Strict):
    """The raw dataset and how the prepare stage reads it."""

    dataset: DatasetName = "synthetic"
    root: str = ""  # the dataset's folder in its official layout (unused by synthetic)
    splits: tuple[str, ...] = ("train", "val")
    on_bad_sample: Literal["error", "skip"] = "error"
    image_size: tuple[_Side, _Side] = (96, 128)  # synthetic only: rendered H, W
    num_train: int = Field(128, ge=1)  # synthetic only: samples per split
    num_val: int = Field(32, ge=1)
    ignore_index: int = 255
    seed: int = 0
    prepared_dir: str = "data/prepared"
    shards_dir: str = "data/shards"


class ShardParams(_Strict):
    """How the shard stage packs samples into WebDataset tars."""

    max_samples: int = Field(64, ge=1)  # per shard
    max_bytes: int = Field(256 * 2**20, ge=1024)  # a shard closes once its payload reaches it (wds.ShardWriter)
    min_shards: int = Field(8, ge=1)  # per split (capped by its sample count): readers = ranks × workers
    seed: int = 0  # sharding-time shuffle
    rgb_format: Literal["png", "jpg"] = "png"
    jpeg_quality: int = Field(95, ge=1, le=100)


class LoaderParams(_Strict):
    """How training and evaluation read the shards."""

    shuffle_buffer: int = Field(256, ge=0)
    num_workers: int = Field(0, ge=0)
    scale_range: tuple[float, float] = (0.75, 1.5)  # random rescale (min, max) before the crop
    crop_size: tuple[_Side, _Side] | None = None  # (H, W), 16..4096 each; None = the input size
    hflip: bool = True
    color_jitter: float = Field(0.2, ge=0)

    @field_validator("scale_range")
    @classmethod
    def _scales(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 8:
            raise ValueError(f"need 0 < min <= max <= 8, got {list(v)}")
        return v


class TrainParams(_Strict):
    """Optimisation, and how Ray Train runs it (workers, resources, failures, storage)."""

    epochs: int = Field(4, ge=1)  # with time_budget_s: the most epochs
    time_budget_s: float | None = Field(None, gt=0)  # wall-clock budget: the schedule follows the clock
    eval_every: int = Field(1, ge=1)  # validate every N epochs (and after the last)
    batch_size: int = Field(8, ge=1)  # per worker
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-4, gt=0)
    lr_mult: float = Field(10.0, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    momentum: float = Field(0.9, ge=0)
    eps: float = Field(1e-3, gt=0)
    poly_power: float = Field(0.9, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup: float = Field(0.0, ge=0, lt=1)  # fraction of the schedule with a linear warm-up
    class_weights: Literal["none", "median_freq"] | tuple[float, ...] = "none"  # segmentation CE
    amp: bool = False
    channels_last: bool = False
    compile: bool = False  # torch.compile of the model's forward (CPU or CUDA)
    grad_compression: Literal["none", "fp16", "bf16"] = "none"  # DDP gradient all-reduce in this dtype
    loss_weights: dict[Task, Annotated[float, Field(ge=0)]] = {"depth": 1.0, "seg": 1.0, "normal": 1.0}
    aux_weight: float = Field(0.2, ge=0)
    normal_loss: Literal["acos", "cosine"] = "acos"
    seed: int = 0
    workers: int = Field(2, ge=1)  # Ray Train workers (DDP ranks)
    use_gpu: bool = False  # NCCL on GPUs, gloo on CPUs
    resources_per_worker: dict[str, Annotated[float, Field(ge=0)]] = {"CPU": 1.0}
    max_failures: int = Field(2, ge=-1)  # worker failures to recover from (-1: no limit)
    storage_path: str = "runs/ray"  # Ray checkpoints; shared storage (NFS/S3) for multi-node
    keep_checkpoints: int | None = Field(1, ge=1)  # best (by best_metric) kept beside the latest; None: all
    run_name: str | None = None  # None: derived from the settings, so a re-run resumes its own run
    best_metric: str = "val/seg/miou"
    best_mode: Literal["max", "min"] = "max"
    models_dir: str = "models"  # best.pt, model_card.json, samples.png


class TrackingParams(_Strict):
    """MLflow: ``uri`` null = ``$MLFLOW_TRACKING_URI`` or the embedded sqlite file ``mlflow.db``;
    ``experiment`` null = one experiment per dataset, ``vista/<data.dataset>`` (see :meth:`Params.experiment_name`)."""

    uri: str | None = None
    experiment: str | None = Field(None, min_length=1)
    log_images: int = Field(4, ge=0)  # val images logged (prediction panels) at every evaluation
    system_metrics_s: float = Field(10.0, ge=0)  # rank 0 samples CPU/memory/GPU every N seconds; 0: off


class EvalParams(_Strict):
    """The evaluate stage: the split the best model is measured on (model selection used val), and the
    depth protocol (range and crop) when it should differ from the dataset's."""

    split: str = "val"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")  # auto: CUDA when there is one, else CPU
    depth_range: tuple[float, float] | None = None  # (min, max) metres; None: the dataset's protocol
    depth_crop: Literal["none", "eigen", "garg"] | None = None  # None: the dataset's (NYU eigen, KITTI garg)

    @field_validator("depth_range")
    @classmethod
    def _range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 <= v[0] < v[1]:
            raise ValueError(f"need 0 <= min < max, got {list(v)}")
        return v


class RegistryParams(_Strict):
    """The register stage: the MLflow registered model and the gate that moves its ``champion`` alias.

    Every registered version gets the alias ``challenger``; ``champion`` moves to it only when its gate
    metric (from ``eval/metrics.json``) beats the current champion's by more than ``min_delta``.
    """

    model_name: str = Field("vista", min_length=1)
    gate_metric: str | None = None  # split/task/metric in eval/metrics.json; None: train.best_metric on eval.split
    gate_mode: Literal["max", "min"] | None = None  # None: train.best_mode
    min_delta: float = Field(0.0, ge=0)


SpaceKind = Literal["choice", "grid", "uniform", "loguniform", "randint"]


class SchedulerParams(_Strict):
    """Trial scheduler. ``asha``: stops weak trials at epochs grace_period · reduction_factor^k."""

    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)  # epochs every trial runs at least
    reduction_factor: float = Field(2.0, gt=1)
    max_epochs: int | None = Field(None, ge=1)  # None: train.epochs


class TuneParams(_Strict):
    """Ray Tune sweeps (``vista tune``): a search space over dotted keys of this file.

    ``search_space``: ``{dotted.key: {kind: args}}`` with kind ``choice: [values]``, ``grid: [values]``
    (every value, times num_samples; random searcher only), ``uniform: [low, high]``,
    ``loguniform: [low, high]`` (low > 0), ``randint: [low, high]`` (integers, high exclusive).
    """

    search_space: dict[str, dict[SpaceKind, list[Any]]] = {}
    searcher: Literal["random", "optuna"] = "random"
    num_samples: int = Field(4, ge=1)
    metric: str | None = None  # None: train.best_metric
    mode: Literal["max", "min"] | None = None  # None: train.best_mode
    scheduler: SchedulerParams = SchedulerParams()
    max_concurrent_trials: int = Field(1, ge=1)
    trial_resources: dict[str, Annotated[float, Field(ge=0)]] = {
        "CPU": 0.01
    }  # the trial's driver (it only waits on its workers)
    workers: int | None = Field(None, ge=1)  # per trial; None: train.workers
    resources_per_worker: dict[str, Annotated[float, Field(ge=0)]] | None = None  # None: train.resources_per_worker
    seed: int = 0  # searcher seed
    name: str | None = None  # None: derived from the settings (a re-run resumes the sweep)
    storage_path: str = "runs/tune"
    out_dir: str = "tune"  # best_params.yaml, results.parquet

    @field_validator("search_space")
    @classmethod
    def _space(cls, space: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, list[Any]]]:
        for key, spec in space.items():
            if key.split(".")[0] in ("tune", "profiles"):
                raise ValueError(f"{key}: only model/data/shard/loader/train/... settings can be swept")
            if len(spec) != 1:
                raise ValueError(f"{key}: give exactly one of choice/grid/uniform/loguniform/randint, got {spec}")
            ((kind, args),) = spec.items()
            if kind in ("choice", "grid"):
                if not args:
                    raise ValueError(f"{key}: {kind} needs at least one value")
            else:
                if len(args) != 2 or not all(isinstance(a, int | float) for a in args) or not args[0] < args[1]:
                    raise ValueError(f"{key}: {kind} needs [low, high] numbers with low < high, got {args}")
                if kind == "loguniform" and args[0] <= 0:
                    raise ValueError(f"{key}: loguniform needs low > 0, got {args}")
                if kind == "randint" and not all(isinstance(a, int) for a in args):
                    raise ValueError(f"{key}: randint needs integers, got {args}")
        return space


class StudyParams(_Strict):
    """An equal-budget comparison (``vista study NAME``): every model × seed trained with the same settings.

    ``profile`` and ``overrides`` (dotted keys) are applied to params.yaml for every run; each run then
    sets ``model.name`` and ``train.seed``. ``metrics`` are the columns of the results table; the first
    one is plotted against training wall-clock.
    """

    profile: str | None = None
    models: tuple[str, ...] = Field(min_length=1)
    seeds: tuple[int, ...] = Field((0, 1, 2), min_length=1)
    overrides: dict[str, Any] = {}
    model_overrides: dict[str, dict[str, Any]] = {}  # model name -> dotted overrides of its runs only
    metrics: tuple[str, ...] = Field(("val/seg/miou",), min_length=1)
    out_dir: str = "docs/results"  # <out_dir>/<study>/: runs.csv, summary.csv, table.md, curves.png
    runs_dir: str = "runs/study"  # checkpoints and models of each run

    @field_validator("metrics")
    @classmethod
    def _metric_keys(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [m for m in v if len(m.split("/")) != 3]
        if bad:
            raise ValueError(f"metrics {bad}: expected split/task/metric keys, e.g. val/seg/miou")
        return v


class Params(_Strict):
    model: ModelParams = ModelParams()
    data: DataParams = DataParams()
    shard: ShardParams = ShardParams()
    loader: LoaderParams = LoaderParams()
    train: TrainParams = TrainParams()
    tracking: TrackingParams = TrackingParams()
    eval: EvalParams = EvalParams()
    registry: RegistryParams = RegistryParams()
    tune: TuneParams = TuneParams()
    studies: dict[str, StudyParams] = {}
    profiles: dict[str, dict[str, Any]] = {}

    def experiment_name(self) -> str:
        """The MLflow experiment of train, tune and register: ``tracking.experiment`` when set, else
        ``vista/<data.dataset>``, so runs on different datasets never share a runs table (their metrics
        are not comparable)."""
        return self.tracking.experiment or f"vista/{self.data.dataset}"

    def flatten(self) -> dict[str, Any]:
        """Dotted keys to scalar values (lists joined), e.g. for experiment trackers."""
        return flatten(self.model_dump(exclude={"profiles", "studies"}))

    @model_validator(mode="after")
    def _swept_keys_exist(self) -> Params:
        tree = self.model_dump(exclude={"profiles", "tune"})
        for key in self.tune.search_space:
            node: Any = tree
            for i, part in enumerate(key.split(".")):
                if not isinstance(node, dict) or part not in node:
                    raise ValueError(f"tune.search_space: {key} is not a setting ({'.'.join(key.split('.')[: i + 1])})")
                node = node[part]
        return self


def flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested mappings -> ``{"a.b.c": leaf}`` (``sep`` joins the keys)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}{sep}", sep))
        else:
            out[key] = v
    return out


MAX_OVERRIDE_DEPTH = 16  # nesting of a --set value ({a: [b, ...]}); far deeper than any setting
_OPEN = (
    yaml.FlowSequenceStartToken,
    yaml.FlowMappingStartToken,
    yaml.BlockSequenceStartToken,
    yaml.BlockMappingStartToken,
)
_CLOSE = (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken, yaml.BlockEndToken)


def _parse_value(raw: str, key: str = "?") -> Any:
    """YAML scalars and flow collections: "3", "1e-4", "true", "[1, 4, 8]", "null", "vista_r50"; text
    that is not YAML stays text. Refused before anything is built: anchors and aliases (a few hundred
    characters of them expand to gigabytes) and nesting deeper than :data:`MAX_OVERRIDE_DEPTH`."""
    try:
        tokens = list(yaml.scan(raw))
    except yaml.YAMLError:
        return raw
    depth = 0
    for token in tokens:
        if isinstance(token, yaml.AliasToken | yaml.AnchorToken):
            raise ParamsError(f"override {key}: YAML anchors and aliases (& and *) are not allowed; quote the value")
        depth += isinstance(token, _OPEN) - isinstance(token, _CLOSE)
        if depth > MAX_OVERRIDE_DEPTH:
            raise ParamsError(f"override {key}: nested deeper than {MAX_OVERRIDE_DEPTH} levels")
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_override(tree: dict[str, Any], key: str, value: Any, sep: str = ".") -> None:
    """Set ``tree[a][b][c] = value`` for ``key="a.b.c"`` (parts split at ``sep``), creating missing
    mappings (also where a section is empty: ``None``). The one dotted-key writer: overrides, metric
    trees (``val/seg/miou``), the round-trip YAML of ``vista tune promote``."""
    parts = key.split(sep)
    if not key or any(not p for p in parts):
        raise ParamsError(f"override key {key!r}: expected dotted keys like 'train.lr'")
    node = tree
    for i, p in enumerate(parts[:-1]):
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ParamsError(f"override {key}={value!r}: {sep.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: Iterable[str]) -> list[tuple[str, Any]]:
    """``["train.lr=1e-3", ...]`` -> ``[("train.lr", 0.001), ...]``."""
    out = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ParamsError(f"override {item!r}: expected key=value, e.g. train.epochs=2")
        out.append((key.strip(), _parse_value(raw.strip(), key.strip())))
    return out


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        lines.append(f"{key}={e.get('input')!r}: {e['msg']}" if key else e["msg"].removeprefix("Value error, "))
    return "invalid params: " + "; ".join(lines)


def with_overrides(tree: Mapping[str, Any] | Params, overrides: Mapping[str, Any]) -> Params:
    """Settings (a nested mapping or :class:`Params`) with dotted-key ``overrides`` applied, validated."""
    import copy

    base = tree.model_dump(mode="json") if isinstance(tree, Params) else copy.deepcopy(dict(tree))
    for key, value in overrides.items():
        apply_override(base, key, value)
    return validate_params(base)


def validate_params(tree: Mapping[str, Any]) -> Params:
    """Validate a nested mapping (e.g. ``Params.model_dump()`` sent to a worker) into :class:`Params`."""
    try:
        return Params.model_validate(tree)
    except ValidationError as err:
        raise ParamsError(_format_error(err)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_params(
    path: str | os.PathLike[str] = "params.yaml",
    overrides: Iterable[str] = (),
    profile: str | None = None,
) -> Params:
    """Read, override and validate the settings.

    Args:
        path: the YAML file.
        overrides: ``key.sub=value`` strings, applied after the profile.
        profile: a name under ``profiles:`` in the file; defaults to ``$VISTA_PROFILE`` if set.

    Returns:
        The validated :class:`Params`.

    Raises:
        ParamsError: unreadable file, unknown profile, unknown key or invalid value (named).
    """
    p = Path(path)
    try:
        tree = yaml.load(p.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except FileNotFoundError:
        raise ParamsError(f"{p}: params file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ParamsError(f"{p}: cannot read the params file ({err})") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{p}: not valid YAML ({err})") from None
    if tree is None:
        raise ParamsError(f"{p}: the params file is empty (every setting would silently be a code default)")
    if not isinstance(tree, dict):
        raise ParamsError(f"{p}: expected a mapping at the top level, got {type(tree).__name__}")
    profile = profile if profile is not None else (os.environ.get(PROFILE_ENV) or None)
    if profile is not None:
        profiles = tree.get("profiles") or {}
        if profile not in profiles:
            raise ParamsError(f"profile {profile!r} not in {p} (have: {sorted(profiles)})")
        for key, value in (profiles[profile] or {}).items():
            apply_override(tree, key, value)
    for key, value in parse_overrides(overrides):
        apply_override(tree, key, value)
    return validate_params(tree)
