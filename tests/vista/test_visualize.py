"""Colourisation of predictions: shapes, invalid pixels, fixed mappings."""

from __future__ import annotations

import numpy as np
import torch

from vista.data.batch import to_tensors
from vista.visualize import colorize_depth, colorize_normals, colorize_seg, denormalize, palette, panel


def test_denormalize_inverts_the_model_input() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    assert np.array_equal(denormalize(to_tensors({"rgb": rgb})["rgb"]), rgb)


def test_depth_colours_monotone_and_invalid_black() -> None:
    d = torch.tensor([[0.0, 1.0, 2.0, 4.0, float("inf")]])
    rgb = colorize_depth(d, max_depth=4.0)
    assert rgb.shape == (1, 5, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 0] == 0).all() and (rgb[0, 4] == 0).all()
    assert len({tuple(c) for c in rgb[0, 1:4]}) == 3  # distinct depths, distinct colours


def test_seg_colours_from_ids_or_logits_and_void() -> None:
    ids = np.array([[0, 1], [2, 255]])
    out = colorize_seg(ids, 3)
    pal = palette(3)
    assert (out[0, 0] == pal[0]).all() and (out[1, 0] == pal[2]).all() and (out[1, 1] == 0).all()
    logits = torch.nn.functional.one_hot(torch.tensor([[0, 1], [2, 0]]), 3).permute(2, 0, 1).float()
    assert np.array_equal(colorize_seg(logits, 3)[0], out[0])
    image = np.full((2, 2, 3), 100, np.uint8)
    blended = colorize_seg(ids, 3, image, alpha=0.5)
    assert (blended[1, 1] == 100).all()  # void shows the image
    assert np.array_equal(blended[0, 0], ((100 + pal[0].astype(float)) / 2 + 0.5).astype(np.uint8))


def test_normals_as_rgb() -> None:
    n = torch.zeros(3, 1, 3)
    n[:, 0, 0] = torch.tensor([0.0, 0.0, -1.0])
    n[:, 0, 1] = torch.tensor([1.0, 0.0, 0.0])
    rgb = colorize_normals(n)
    assert rgb[0, 0].tolist() == [128, 128, 0] and rgb[0, 1].tolist() == [255, 128, 128]
    assert rgb[0, 2].tolist() == [0, 0, 0]
    assert panel([rgb, rgb]).shape == (1, 6, 3)
