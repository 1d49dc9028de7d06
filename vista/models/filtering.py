"""Pixel-adaptive filtering and the message/evidence op of the structured attention.

``message_evidence`` computes the filtered sender ``S = D(f_e, W)`` and the evidence
``Φ = f_r ⊙ S + D(f_e, K^e) + D(f_r, K^r)`` through one registered op, ``vista::message_evidence``
(``torch.library.custom_op`` with a registered backward and fake kernel, so ``torch.compile`` traces
through it without a graph break). Two implementations sit behind it:

- ``torch``: k² shifted products on channels-last views of the inputs (any device), each tap over the
  rectangle where its neighbour lies inside the grid (no padded copies); the backward recomputes the
  products instead of saving k² shifted copies.
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

from .layout import samples_contiguous

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


# The op's torch implementation works channels-last: every filter broadcasts one kernel value per pixel
# over the channels, and with the channels innermost each of those broadcasts is one contiguous run of C
# values (in NCHW it is a run of w, 15-60 values on the model's grids: 2.5x slower on a CPU). Inputs in
# bf16/fp16 are computed in float32 on the CPU, which has no fast half-precision element-wise arithmetic
# (~1.8x) and then rounds once instead of once per tap. No padded copies: each tap works on the rectangle
# where its neighbour lies inside the grid (elsewhere it reads zero padding and adds nothing), which at
# the large dilations of small grids is half the grid or less.

Region = tuple[slice, slice]


def _taps(h: int, w: int, dilation: int, kernel_size: int) -> list[tuple[int, Region, Region]]:
    """``(j, out, src)`` for every tap j (unfold's row-major order) whose neighbour can lie inside the
    grid: output pixels ``out`` (rows, cols) read the input at ``src``, the same rectangle moved by the
    tap's offset ``d·(dy − k//2, dx − k//2)``."""
    c = kernel_size // 2
    taps = []
    for j in range(kernel_size * kernel_size):
        oy, ox = ((j // kernel_size) - c) * dilation, ((j % kernel_size) - c) * dilation
        if abs(oy) >= h or abs(ox) >= w:
            continue
        out = (slice(max(0, -oy), h - max(0, oy)), slice(max(0, -ox), w - max(0, ox)))
        src = (slice(out[0].start + oy, out[0].stop + oy), slice(out[1].start + ox, out[1].stop + ox))
        taps.append((j, out, src))
    return taps


def _nhwc(x: Tensor, dtype: torch.dtype, contiguous: bool = False) -> Tensor:
    """``x`` (B, C, h, w) as a (B, h, w, C) view in ``dtype`` (a copy only for the cast), or with
    ``contiguous`` a channels-innermost copy where ``x`` is not channels-last already."""
    y = x.permute(0, 2, 3, 1).to(dtype)
    return y.contiguous() if contiguous else y


def _compute_dtype(x: Tensor) -> torch.dtype:
    half = x.dtype in (torch.bfloat16, torch.float16)
    return torch.float32 if half and x.device.type == "cpu" else x.dtype


def _like(t: Tensor, ref: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``t`` (B, h, w, C) as a (B, C, h, w) tensor with the strides of ``ref`` (the op's fake kernels
    promise ``empty_like(ref)``), in ``dtype`` (default: ``ref``'s): no copy when the layouts agree."""
    out = t.permute(0, 3, 1, 2)
    dtype = ref.dtype if dtype is None else dtype
    if out.stride() == ref.stride():
        return out.to(dtype)
    return torch.empty_like(ref, dtype=dtype).copy_(out)


def _evidence_forward(
    f_e: Tensor, f_r: Tensor | None, w: Tensor, k_e: Tensor, k_r: Tensor | None, dilation: int, kernel_size: int
) -> tuple[Tensor, Tensor]:
    """``(S, Φ)``. ``f_r=None``: the receiver is the sender, and ``D(f, K^e) + D(f, K^r) = D(f, K^e + K^r)``
    is one filter (``k_r=None``: ``k_e`` holds the sum already)."""
    dt = _compute_dtype(f_e)
    xe = _nhwc(f_e, dt, True)  # (B, h, w, C)
    same = f_r is None
    xr = xe if same else _nhwc(f_r, dt, True)
    if same and k_r is not None:
        k_e, k_r = k_e + k_r, None
    ke = _nhwc(torch.stack([w, k_e], 1).flatten(1, 2), dt).unflatten(-1, (2, -1))  # (B, h, w, 2, k²)
    kr = None if k_r is None else _nhwc(k_r, dt)  # (B, h, w, k²)
    xe2 = xe.unsqueeze(3)  # (B, h, w, 1, C)
    c = kernel_size * kernel_size // 2  # the centre tap: offset 0, every pixel
    sk = ke[..., c : c + 1] * xe2  # (B, h, w, 2, C): S = D(f_e, W) and D(f_e, K^e), one product per tap
    p = None if kr is None else kr[..., c : c + 1] * xr  # D(f_r, K^r)
    for j, (oy, ox), (sy, sx) in _taps(*xe.shape[1:3], dilation, kernel_size):
        if j != c:
            sk[:, oy, ox].addcmul_(ke[:, oy, ox, :, j : j + 1], xe2[:, sy, sx])
            if p is not None:
                p[:, oy, ox].addcmul_(kr[:, oy, ox, j : j + 1], xr[:, sy, sx])
    s = sk[:, :, :, 0]
    phi = torch.addcmul(sk[:, :, :, 1], xr, s) if p is None else p.add_(sk[:, :, :, 1]).addcmul_(xr, s)
    return _like(s, f_e), _like(phi, f_e)  # (B, C, h, w) each


def _evidence_backward(
    g_s: Tensor,
    g_phi: Tensor,
    f_e: Tensor,
    f_r: Tensor | None,
    w: Tensor,
    k_e: Tensor,
    k_r: Tensor | None,
    s: Tensor,
    dilation: int,
    ks: int,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """``(g_fe, g_fr, g_K)`` as the Triton backward's. ``f_r=None``: the receiver is the sender, its
    gradient folded into ``f_e``'s; ``K^e`` and ``K^r`` then get the same gradient (zero for ``K^r`` when
    ``k_r=None``: ``k_e`` held the sum)."""
    same = f_r is None
    dt = _compute_dtype(f_e)
    xe = _nhwc(f_e, dt, True)  # (B, h, w, C), channels innermost: the reductions run along them
    xr = xe if same else _nhwc(f_r, dt, True)
    gs, gphi = (_nhwc(g, dt, True) for g in (g_s, g_phi))
    g_s_total = torch.addcmul(gs, gphi, xr)  # S enters Φ through f_r ⊙ S
    has_kr = k_r is not None
    if same and has_kr:
        k_e, k_r = k_e + k_r, None  # one filter, as in the forward
    kw, ke = _nhwc(w, dt), _nhwc(k_e, dt)  # (B, h, w, k²)
    kr = None if k_r is None else _nhwc(k_r, dt)
    c = ks * ks // 2
    # inputs: the adjoint of each tap adds kernel ⊙ gradient at the output pixels to the neighbours they read
    g_e = kw[..., c : c + 1] * g_s_total  # (B, h, w, C)
    g_e.addcmul_(ke[..., c : c + 1], gphi)
    g_r = g_e if kr is None else kr[..., c : c + 1] * gphi
    # kernels: g_K[j] at each pixel, a dot product over the (contiguous) channels of an upstream gradient
    # and the neighbour of tap j; zero where that neighbour is padding
    g_k = xe.new_zeros(3, *xe.shape[:3], ks * ks)  # (3, B, h, w, k²): g_W, g_Kᵉ, g_Kʳ
    for j, (oy, ox), (sy, sx) in _taps(*xe.shape[1:3], dilation, ks):
        ne = xe[:, sy, sx]
        g_k[0, :, oy, ox, j] = (g_s_total[:, oy, ox] * ne).sum(-1)
        g_k[1, :, oy, ox, j] = (gphi[:, oy, ox] * ne).sum(-1)
        if not same:
            g_k[2, :, oy, ox, j] = (gphi[:, oy, ox] * xr[:, sy, sx]).sum(-1)
        if j != c:
            g_e[:, sy, sx].addcmul_(kw[:, oy, ox, j : j + 1], g_s_total[:, oy, ox])
            g_e[:, sy, sx].addcmul_(ke[:, oy, ox, j : j + 1], gphi[:, oy, ox])
            if kr is not None:
                g_r[:, sy, sx].addcmul_(kr[:, oy, ox, j : j + 1], gphi[:, oy, ox])
    if same and has_kr:
        g_k[2] = g_k[1]
    g_r_direct = gphi * _nhwc(s, dt)
    g_k = g_k.permute(0, 1, 4, 2, 3).to(w.dtype).contiguous()  # (3, B, k², h, w)
    if same:
        return _like(g_e.add_(g_r_direct), f_e), None, g_k
    return _like(g_e, f_e), _like(g_r.add_(g_r_direct), f_e, f_r.dtype), g_k


# --------------------------------------------------------------------------------------------------
# Backend choice
# --------------------------------------------------------------------------------------------------


@functools.cache
def _triton_module() -> ModuleType | None:
    """:mod:`vista.models.triton_filter`, or ``None`` (logged once) when triton does not import."""
    try:  # through sys.modules (not the package's attribute): an optional module, and tests can hide it
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
    k_r: Tensor | None,
    dilation: int,
    kernel_size: int,
    backend: str,
) -> tuple[Tensor, Tensor]:
    if _uses_triton(backend, f_e):
        tf = _triton_module()
        assert tf is not None
        k_r = torch.zeros_like(k_e) if k_r is None else k_r
        return tf.evidence_forward(f_e, f_r, w, k_e, k_r, dilation, kernel_size)
    return _evidence_forward(f_e, f_r, w, k_e, k_r, dilation, kernel_size)


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
    k_r: Tensor | None,
    s: Tensor,
    dilation: int,
    kernel_size: int,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(g_fe, g_fr, g_K)``: ``g_fr`` is empty when ``f_r`` is ``None`` (folded into g_fe); ``g_K`` stacks
    ``(g_W, g_Kᵉ, g_Kʳ)``, (3, B, k², h, w), one tensor from one reduction (outputs of an op must not
    alias each other, so three views of it could not be returned)."""
    if _uses_triton(backend, f_e):
        tf = _triton_module()
        assert tf is not None
        g_s, g_phi = g_s.contiguous(), g_phi.contiguous()
        k_r = torch.zeros_like(k_e) if k_r is None else k_r
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
    g_w, g_ke, g_kr = g_k.unbind(0)
    return g_fe, None if f_r is None else g_fr, g_w, g_ke, None if k_r is None else g_kr, None, None, None


_message_evidence_op.register_autograd(_backward, setup_context=_setup_context)


def _per_sample_contiguous(k: Tensor) -> Tensor:
    """``k`` itself when :func:`samples_contiguous` (no copy), else a contiguous copy."""
    return k if samples_contiguous(k) else k.contiguous()


def _dense(x: Tensor, channels_last_ok: bool) -> Tensor:
    """``x`` contiguous, or as it is when channels-last dense and ``channels_last_ok``."""
    if channels_last_ok and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def message_evidence(
    f_e: Tensor,
    f_r: Tensor,
    w: Tensor,
    k_e: Tensor,
    k_r: Tensor | None,
    dilation: int,
    kernel_size: int,
    *,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor]:
    """Filtered sender ``S = D(f_e, W)`` and evidence ``Φ = f_r ⊙ S + D(f_e, K^e) + D(f_r, K^r)``.

    Args:
        f_e, f_r: sender and receiver ``(B, C, h, w)`` (may be the same tensor).
        w, k_e, k_r: per-pixel kernels ``(B, k², h, w)`` (channel slices of a larger conv output are
            used in place). ``k_r=None`` when ``f_r`` is ``f_e``: ``k_e`` then holds ``K^e + K^r`` (the
            two filters of one feature are one filter; :func:`vista.models.attention.predict_kernels`
            predicts the sum with one conv).
        dilation, kernel_size: spacing d and size k of the kernel taps.
        backend: ``auto`` (Triton on CUDA when triton imports, shifted products otherwise), ``torch``
            (shifted products) or ``triton`` (fused kernels; on CPU tensors in Triton's interpreter).

    Returns:
        ``(S, Φ)``, each ``(B, C, h, w)``, in the promoted dtype of the inputs. Double backward is not
        supported.
    """
    same = f_r is f_e  # the sender's neighbours serve all the filters; one input gradient
    if k_r is None and not same:
        raise ValueError("message_evidence: k_r=None (k_e holding K^e + K^r) needs f_r to be f_e")
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in (f_e, f_r, w, k_e, k_r) if t is not None))
    # the Triton kernels read NCHW; the shifted products take channels-last features as they come (the
    # outputs then have f_e's layout: no NCHW<->NHWC copies around the op in a channels_last model)
    keep = not _uses_triton(backend, f_e)
    f_e = _dense(f_e.to(dtype), keep)
    f_r = f_e if same else _dense(f_r.to(dtype), keep)
    w, k_e, k_r = (
        t if t is None else t.to(dtype) if keep else _per_sample_contiguous(t.to(dtype)) for t in (w, k_e, k_r)
    )
    f_r_arg = None if same else f_r
    return _message_evidence_op(f_e, f_r_arg, w, k_e, k_r, int(dilation), int(kernel_size), backend)
