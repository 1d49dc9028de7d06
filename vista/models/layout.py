"""The memory layout the message/evidence kernels read (:mod:`vista.models.filtering`, and the Triton
kernels of :mod:`vista.models.triton_filter`)."""

from __future__ import annotations

from torch import Tensor


def samples_contiguous(k: Tensor) -> bool:
    """Whether each sample's k²×h×w block of ``k`` (B, k², h, w) is contiguous, at any batch stride (a
    channel slice of one conv's output, as the model's kernels are): the layout the Triton kernels read."""
    return k.shape[0] == 0 or k[0].is_contiguous()
