"""Pixel-adaptive filtering and the message/evidence op of the structured attention.

``message_evidence`` computes the filtered sender ``S = D(f_e, W)`` and the evidence
``Φ = f_r ⊙ S + D(f_e, K^e) + D(f_r, K^r)`` through one registered op, ``vista::message_evidence``
(``torch.library.custom_op`` with a registered backward and fake kernel, so ``torch.compile`` traces
through it without a graph break). Two implementations sit behind it:

- ``torch``: k² shifted products of one padded copy of each input (any device); the backward
  recomputes the shifts instead of saving k² shifted copies.
- ``triton``: the fused kernels of :mod:`vista.models.triton_filter`, one launch for the forward and
  one for the backward, no padded or shifted copies at all. On CPU tensors they run in Triton's
  interpreter (for tests: slow, but the same kernel code).

``backend="auto"`` (the model's default) takes ``triton`` for CUDA tensors when triton imports and
``torch`` otherwise. Neither materialises the ``B×C×k²×h×w`` unfold tensor of the official code
(``vista.models.reference`` keeps that algorithm as a test oracle and benchmark baseline).
"""

from __future__ import annotations

import functools
import importlib
import logging
from types import ModuleType
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "triton")


# --------------------------------------------------------------------------------------------------
# Shifted products (the torch implementation)
# --------------------------------------------------------------------------------------------------


def _shifts(x: Tensor, dilation: int, kernel_size: int) -> list[Tensor]:
    """The k² shifted (zero-padded) views of ``x`` (B, C, h, w), in unfold's row-major order."""
    h, w = x.shape[-2:]
    p = dilation * (kernel_size - 1) // 2
    xp = F.pad(x, (p, p, p, p))  # (B, C, h+2p, w+2p), one copy shared by all k² views
    return [
        xp[:, :, dy * dilation : dy * dilation + h, dx * dilation : dx * dilation + w]
        for dy in range(kernel_size)
        for dx in range(kernel_size)
    ]


def pixel_adaptive_filter(x: Tensor, kernel: Tensor, dilation: int, kernel_size: int) -> Tensor:
    """``D(x, K)[b, c, i] = Σ_j K[b, j, i] · x[b, c, i + d·offset_j]`` (zero padding).

    Args:
        x: features ``(B, C, h, w)``.
        kernel: one k×k kernel per pixel, shared over channels, ``(B, k², h, w)``.
        dilation: spacing d of the kernel taps.
        kernel_size: k.

    Returns:
        ``(B, C, h, w)``; computed as k² shifted products, without a ``B×C×k²×h×w`` tensor.
    """
    out: Tensor | None = None
    for j, xs in enumerate(_shifts(x, dilation, kernel_size)):
        kj = kernel[:, j : j + 1]  # (B, 1, h, w), broadcast over channels
        out = kj * xs if out is None else out.addcmul_(kj, xs)
    assert out is not None
    return out


def _evidence_forward(
    f_e: Tensor, f_r: Tensor, w: Tensor, k_e: Tensor, k_r: Tensor, dilation: int, kernel_size: int
) -> tuple[Tensor, Tensor]:
    s: Tensor | None = None
    p: Tensor | None = None
    shifts_e = _shifts(f_e, dilation, kernel_size)
    shifts_r = shifts_e if f_r is f_e else _shifts(f_r, dilation, kernel_size)
    for j, (xe, xr) in enumerate(zip(shifts_e, shifts_r, strict=True)):
        wj, kej, krj = w[:, j : j + 1], k_e[:, j : j + 1], k_r[:, j : j + 1]
        s = wj * xe if s is None else s.addcmul_(wj, xe)
        p = kej * xe if p is None else p.addcmul_(kej, xe)
        p.addcmul_(krj, xr)
    assert s is not None and p is not None
    return s, p.addcmul_(f_r, s)  # (B, C, h, w) each


def _shift_transpose_add(g_pad: Tensor, kernel: Tensor, g: Tensor, dilation: int, kernel_size: int) -> None:
    """Adjoint of the shifts: ``g_pad[region_j] += kernel_j ⊙ g`` for every tap j."""
    h, w = g.shape[-2:]
    for j in range(kernel_size * kernel_size):
        dy, dx = divmod(j, kernel_size)
        region = g_pad[:, :, dy * dilation : dy * dilation + h, dx * dilation : dx * dilation + w]
        region.addcmul_(kernel[:, j : j + 1], g)


def _evidence_backward(
    g_s: Tensor,
    g_phi: Tensor,
    f_e: Tensor,
    f_r: Tensor | None,
    w: Tensor,
    k_e: Tensor,
    k_r: Tensor,
    s: Tensor,
    dilation: int,
    ks: int,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """``(g_fe, g_fr, g_K)`` as the Triton backward's; input gradients in one padded buffer per input.
    ``f_r=None``: the receiver is the sender, its gradient folded into ``f_e``'s."""
    same = f_r is None
    f_r = f_e if f_r is None else f_r
    g_s_total = torch.addcmul(g_s, g_phi, f_r)  # S enters Φ through f_r ⊙ S
    shifts_e = _shifts(f_e, dilation, ks)
    shifts_r = shifts_e if same else _shifts(f_r, dilation, ks)
    g_k = torch.stack(  # (3, B, k², h, w): g_W, g_Kᵉ, g_Kʳ
        [
            torch.stack([(g_s_total * xe).sum(1) for xe in shifts_e], 1),
            torch.stack([(g_phi * xe).sum(1) for xe in shifts_e], 1),
            torch.stack([(g_phi * xr).sum(1) for xr in shifts_r], 1),
        ]
    )
    h, wd = s.shape[-2:]
    p = dilation * (ks - 1) // 2
    g_e_pad = s.new_zeros(s.shape[0], s.shape[1], h + 2 * p, wd + 2 * p)
    _shift_transpose_add(g_e_pad, w, g_s_total, dilation, ks)
    _shift_transpose_add(g_e_pad, k_e, g_phi, dilation, ks)
    g_r_pad = g_e_pad if same else s.new_zeros(g_e_pad.shape)
    _shift_transpose_add(g_r_pad, k_r, g_phi, dilation, ks)
    g_e = g_e_pad[:, :, p : p + h, p : p + wd]
    g_r_direct = g_phi * s
    if same:
        return g_e + g_r_direct, None, g_k
    return g_e.contiguous(), g_r_pad[:, :, p : p + h, p : p + wd] + g_r_direct, g_k


# --------------------------------------------------------------------------------------------------
# Backend choice
# --------------------------------------------------------------------------------------------------


@functools.cache
def _triton_module() -> ModuleType | None:
    """:mod:`vista.models.triton_filter`, or ``None`` (logged once) when triton does not import."""
    try:
        triton_filter = importlib.import_module(f"{__package__}.triton_filter")
    except ImportError as e:  # triton is optional: it comes with CUDA builds of torch
        log.warning("triton is not importable (%s): message/evidence uses the shifted-products path on CUDA", e)
        return None
    return triton_filter


def triton_available() -> bool:
    """Whether the Triton kernels can run (triton imports)."""
    return _triton_module() is not None


def _uses_triton(backend: str, x: Tensor) -> bool:
    if backend == "torch":
        return False
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("message_evidence(backend='triton'): triton is not importable")
        return True
    if backend == "auto":
        return x.device.type == "cuda" and triton_available()
    raise ValueError(f"message_evidence: backend={backend!r}; choose one of {BACKENDS}")


# --------------------------------------------------------------------------------------------------
# The op: vista::message_evidence and its backward
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("vista::message_evidence", mutates_args=())
def _message_evidence_op(
    f_e: Tensor,
    f_r: Tensor | None,
    w: Tensor,
    k_e: Tensor,
    k_r: Tensor,
    dilation: int,
    kernel_size: int,
    backend: str,
) -> tuple[Tensor, Tensor]:
    if _uses_triton(backend, f_e):
        tf = _triton_module()
        assert tf is not None
        return tf.evidence_forward(f_e, f_r, w, k_e, k_r, dilation, kernel_size)
    return _evidence_forward(f_e, f_e if f_r is None else f_r, w, k_e, k_r, dilation, kernel_size)


@_message_evidence_op.register_fake
def _(f_e, f_r, w, k_e, k_r, dilation, kernel_size, backend):  # noqa: ANN001, ANN202
    return torch.empty_like(f_e), torch.empty_like(f_e)


@torch.library.custom_op("vista::message_evidence_backward", mutates_args=())
def _message_evidence_backward_op(
    g_s: Tensor,
    g_phi: Tensor,
    f_e: Tensor,
    f_r: Tensor | None,
    w: Tensor,
    k_e: Tensor,
    k_r: Tensor,
    s: Tensor,
    dilation: int,
    kernel_size: int,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(g_fe, g_fr, g_K)``: ``g_fr`` is empty when ``f_r`` is ``None`` (folded into g_fe); ``g_K`` stacks
    ``(g_W, g_Kᵉ, g_Kʳ)``, (3, B, k², h, w), one tensor from one reduction (outputs of an op must not
    alias each other, so three views of it could not be returned)."""
    g_s, g_phi = g_s.contiguous(), g_phi.contiguous()
    if _uses_triton(backend, f_e):
        tf = _triton_module()
        assert tf is not None
        grads = tf.evidence_backward(g_s, g_phi, f_e, f_r, w, k_e, k_r, s, dilation, kernel_size)
    else:
        grads = _evidence_backward(g_s, g_phi, f_e, f_r, w, k_e, k_r, s, dilation, kernel_size)
    g_fe, g_fr, g_k = grads
    return g_fe, f_e.new_empty(0) if g_fr is None else g_fr, g_k


@_message_evidence_backward_op.register_fake
def _(g_s, g_phi, f_e, f_r, w, k_e, k_r, s, dilation, kernel_size, backend):  # noqa: ANN001, ANN202
    g_fr = f_e.new_empty(0) if f_r is None else torch.empty_like(f_e)
    return torch.empty_like(f_e), g_fr, w.new_empty(3, *w.shape)


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
    f_e, f_r, w, k_e, k_r, dilation, kernel_size, backend = inputs
    ctx.save_for_backward(f_e, f_r, w, k_e, k_r, output[0])  # the inputs and S: all alive anyway
    ctx.conf = (dilation, kernel_size, backend)


def _backward(ctx, g_s: Tensor, g_phi: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN001
    f_e, f_r, w, k_e, k_r, s = ctx.saved_tensors
    g_fe, g_fr, g_k = _message_evidence_backward_op(g_s, g_phi, f_e, f_r, w, k_e, k_r, s, *ctx.conf)
    return g_fe, None if f_r is None else g_fr, *g_k.unbind(0), None, None, None


_message_evidence_op.register_autograd(_backward, setup_context=_setup_context)


def samples_contiguous(k: Tensor) -> bool:
    """Whether each sample's k²×h×w block of ``k`` (B, k², h, w) is contiguous, at any batch stride (a
    channel slice of one conv's output, as the model's kernels are): the layout the Triton kernels read."""
    return k.shape[0] == 0 or k[0].is_contiguous()


def _per_sample_contiguous(k: Tensor) -> Tensor:
    """``k`` itself when :func:`samples_contiguous` (no copy), else a contiguous copy."""
    return k if samples_contiguous(k) else k.contiguous()


def message_evidence(
    f_e: Tensor,
    f_r: Tensor,
    w: Tensor,
    k_e: Tensor,
    k_r: Tensor,
    dilation: int,
    kernel_size: int,
    *,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor]:
    """Filtered sender ``S = D(f_e, W)`` and evidence ``Φ = f_r ⊙ S + D(f_e, K^e) + D(f_r, K^r)``.

    Args:
        f_e, f_r: sender and receiver ``(B, C, h, w)`` (may be the same tensor).
        w, k_e, k_r: per-pixel kernels ``(B, k², h, w)`` (channel slices of a larger conv output are
            used in place).
        dilation, kernel_size: spacing d and size k of the kernel taps.
        backend: ``auto`` (Triton on CUDA when triton imports, shifted products otherwise), ``torch``
            (shifted products) or ``triton`` (fused kernels; on CPU tensors in Triton's interpreter).

    Returns:
        ``(S, Φ)``, each ``(B, C, h, w)``, in the promoted dtype of the inputs. Double backward is not
        supported.
    """
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in (f_e, f_r, w, k_e, k_r)))
    same = f_r is f_e  # the sender's neighbours serve all three filters; one input gradient
    f_e = f_e.to(dtype).contiguous()
    w, k_e, k_r = (_per_sample_contiguous(t.to(dtype)) for t in (w, k_e, k_r))
    f_r_arg = None if same else f_r.to(dtype).contiguous()
    return _message_evidence_op(f_e, f_r_arg, w, k_e, k_r, int(dilation), int(kernel_size), backend)
