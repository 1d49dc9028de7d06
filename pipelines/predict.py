"""`vista predict`: colourised predictions of a trained model for image files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console

from vista.config import validate_params
from vista.data.sources.base import read_rgb
from vista.data.torch_dataset import to_tensors
from vista.visualize import colorize_depth, colorize_normals, colorize_seg

from .train import build_model


def load_model(path: str | Path) -> tuple[torch.nn.Module, object]:
    """A model and its params from a checkpoint written by training (``models/best.pt``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model checkpoint not found (train first, or pass --model PATH)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "params" not in state or "model" not in state:
        raise ValueError(f"{path}: not a vista checkpoint (needs 'model' and 'params')")
    params = validate_params(state["params"])
    model = build_model(params)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit the model in its params ({str(err)[:300]})") from None
    return model.eval(), params


@torch.no_grad()
def run(
    images: Sequence[str | Path], model_path: str | Path, out_dir: str | Path, console: Console | None = None
) -> list[Path]:
    """Write ``<stem>_<task>.png`` per image and task (and ``<stem>_depth.npy``, metres) into ``out_dir``."""
    console = console or Console()
    model, params = load_model(model_path)
    m = params.model  # type: ignore[attr-defined]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for image_path in images:
        rgb = read_rgb(image_path)
        pred = model(to_tensors({"rgb": rgb})["rgb"][None])
        stem = Path(image_path).stem
        files = {}
        if "depth" in pred:
            depth = pred["depth"][0, 0].numpy()
            np.save(out / f"{stem}_depth.npy", depth)
            files["depth"] = colorize_depth(depth, m.max_depth)
        if "seg" in pred:
            files["seg"] = colorize_seg(pred["seg"][0], m.num_classes, rgb)
        if "normal" in pred:
            files["normal"] = colorize_normals(pred["normal"][0])
        for task, img in files.items():
            path = out / f"{stem}_{task}.png"
            Image.fromarray(img).save(path)
            written.append(path)
        console.print(f"{image_path}: {', '.join(files)} -> {out}")
    return written
