"""Unfold-based reference of the pixel-adaptive filter: a test oracle and benchmark baseline only.

This is the algorithm of the official code: it materialises ``B×C×k²×h×w`` unfold tensors, which costs
k² times the activation memory. The model never uses it; swap it in with
``StructuredAttention.set_evidence_fn(unfold_message_evidence)`` to compare.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def unfold_filter(x: Tensor, kernel: Tensor, dilation: int, kernel_size: int) -> Tensor:
    """Reference ``D(x, K)``: ``x`` (B, C, h, w), ``kernel`` (B, k², h, w) -> (B, C, h, w)."""
    b, c, h, w = x.shape
    k2 = kernel_size * kernel_size
    pad = dilation * (kernel_size - 1) // 2
    cols = F.unfold(x, kernel_size, dilation=dilation, padding=pad).view(b, c, k2, h, w)
    return (kernel.unsqueeze(1) * cols).sum(2)


def unfold_message_evidence(
    f_e: Tensor, f_r: Tensor, w: Tensor, k_e: Tensor, k_r: Tensor | None, dilation: int, kernel_size: int
) -> tuple[Tensor, Tensor]:
    """Reference of :func:`vista.models.attention.message_evidence`, computed as the official code does
    (``k_r=None``: the sender is the receiver and ``k_e`` holds ``K^e + K^r``, the last term drops)."""
    b, c, h, wd = f_e.shape
    k2 = kernel_size * kernel_size
    pad = dilation * (kernel_size - 1) // 2
    cols_e = F.unfold(f_e, kernel_size, dilation=dilation, padding=pad).view(b, c, k2, h, wd)
    s = (w.unsqueeze(1) * cols_e).sum(2)
    phi = f_r * s + (k_e.unsqueeze(1) * cols_e).sum(2)
    if k_r is not None:
        cols_r = F.unfold(f_r, kernel_size, dilation=dilation, padding=pad).view(b, c, k2, h, wd)
        phi = phi + (k_r.unsqueeze(1) * cols_r).sum(2)
    # the official code recomputes the filtered sender for the message
    return (w.unsqueeze(1) * cols_e).sum(2), phi
