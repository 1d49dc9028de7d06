"""`vista predict`: colourised predictions of a trained model for image files."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console

from vista import tracking
from vista.config import Params
from vista.data.batch import to_tensors
from vista.data.sources.base import read_rgb
from vista.engine import resolve_device
from vista.recipe import load_trained, model_max_depth
from vista.visualize import colorize_depth, colorize_normals, colorize_seg


def load_model(model: str | Path, tracking_uri: str | None = None) -> tuple[torch.nn.Module, Params]:
    """A model and its params: a checkpoint written by training (``models/best.pt``), or a logged or
    registered model (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN/model``)."""
    model = str(model)
    if model.startswith(("models:/", "runs:/")):
        uri = tracking_uri or tracking.tracking_uri()
        tracking.check_server(uri)
        with tempfile.TemporaryDirectory() as d:
            return load_trained(tracking.download_checkpoint(uri, model, d))
    return load_trained(model)


MAX_SIDE = 2048  # default: larger images are predicted (and written) downscaled to this long side


def output_stems(images: Sequence[str | Path]) -> list[str]:
    """One output name per input: its stem, or ``<stem>_<k>`` (k = 1, 2, ... in input order) for stems
    that several inputs share (``a/x.png b/x.jpg``), so no result overwrites another."""
    stems = [Path(p).stem for p in images]
    counts: dict[str, int] = {}
    out = []
    for stem in stems:
        if stems.count(stem) == 1:
            out.append(stem)
        else:
            counts[stem] = counts.get(stem, 0) + 1
            out.append(f"{stem}_{counts[stem]}")
    return out


@torch.no_grad()
def run(
    images: Sequence[str | Path],
    model_path: str | Path,
    out_dir: str | Path,
    console: Console | None = None,
    tracking_uri: str | None = None,
    max_side: int = MAX_SIDE,
    device: str = "auto",
) -> list[Path]:
    """Write ``<stem>_<task>.png`` per image and task (and ``<stem>_depth.npy``, metres) into ``out_dir``.

    Outputs have the input's size, except for images whose long side exceeds ``max_side``: those are
    downscaled to it (aspect kept) before the model, and their outputs have that size (memory bounded).
    ``device``: ``auto`` (CUDA when there is one, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    """
    console = console or Console()
    if max_side < 16:
        raise ValueError(f"--max-side {max_side}: need at least 16 pixels")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file; give a folder (created when missing)")
    dev = resolve_device(device)
    model, params = load_model(model_path, tracking_uri)
    model.to(dev)
    m = params.model
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for image_path, stem in zip(images, output_stems(images), strict=True):
        rgb = read_rgb(image_path, max_side)
        pred = {k: v.float().cpu() for k, v in model(to_tensors({"rgb": rgb})["rgb"][None].to(dev)).items()}
        files = {}
        if "depth" in pred:
            depth = pred["depth"][0, 0].numpy()
            np.save(out / f"{stem}_depth.npy", depth)
            files["depth"] = colorize_depth(depth, model_max_depth(params))
        if "seg" in pred:
            files["seg"] = colorize_seg(pred["seg"][0], m.num_classes, rgb)
        if "normal" in pred:
            files["normal"] = colorize_normals(pred["normal"][0])
        for task, img in files.items():
            path = out / f"{stem}_{task}.png"
            Image.fromarray(img).save(path)
            written.append(path)
        with Image.open(image_path) as im:  # the header only
            original = im.size
        note = f" (downscaled from {original[0]}x{original[1]})" if original != (rgb.shape[1], rgb.shape[0]) else ""
        console.print(f"{image_path}: {', '.join(files)} -> {out / stem}_*{note}")
    return written
