"""Triton kernels of the message/evidence computation (forward and backward), one launch each.

The pixel-adaptive filter ``D(x, K)[b, c, i] = Σ_j K[b, j, i] · x[b, c, i + d·offset_j]`` is computed
tile by tile: a program owns a block of channels × a block of pixels (flattened ``h·w``) of one sample,
loads the k² taps of each per-pixel kernel once for all of its channels, and gathers the k² neighbours
straight from the unpadded input (masked loads stand for the zero padding). Nothing of size
``B×C×k²×h×w`` and no padded or shifted copy is ever written.

- forward: ``S = D(f_e, W)`` and ``Φ = f_r ⊙ S + D(f_e, K^e) + D(f_r, K^r)`` in one launch.
- backward: one launch for everything. With ``G = g_S + g_Φ ⊙ f_r`` (S also enters Φ):
  the kernel gradients ``g_W[j, i] = Σ_c G[c, i] · f_e[c, i + o_j]`` (likewise ``g_Kᵉ`` with ``g_Φ``
  and ``f_e``, ``g_Kʳ`` with ``g_Φ`` and ``f_r``) are reduced over the program's channel block and
  written as per-block partial sums (then one torch sum over the blocks: deterministic, no atomics); the input
  gradients are gathered, ``g_fe[c, i] = Σ_j W[j, i − o_j] · G[c, i − o_j] + Kᵉ[j, i − o_j] · g_Φ[c, i − o_j]``
  and ``g_fr[c, i] = Σ_j Kʳ[j, i − o_j] · g_Φ[c, i − o_j] + g_Φ[c, i] · S[c, i]``.

This module imports triton; :mod:`vista.models.filtering` imports it only when the Triton path is used.
Kernels on CPU tensors run in Triton's interpreter (tests without a GPU), on CUDA tensors compiled
(unless ``TRITON_INTERPRET=1``). The mode is chosen per launch, not by ``TRITON_INTERPRET`` at import:
each kernel is wrapped both ways, and its body calls only triton builtins (``tl.full``, ``tl.reduce``
with ``tl.standard._sum_combine``, which the interpreter runs as a numpy sum) and no ``@triton.jit``
helper of triton.language, which would be compiled-only once triton.language was imported without
the variable. So one process runs both (a GPU box running the interpreter tests and the CUDA tests).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections import Counter

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

from .layout import samples_contiguous

# (channels, pixels) per program. The per-pixel kernel taps are loaded once per tile and shared by its
# channels; the backward writes ceil(C / channels) partial sums of the kernel gradients. Sized for
# registers with ptxas for sm_90 (benchmarks/triton_registers.py; no GPU needed): forward 55-62,
# backward 80-96 registers per thread at 4 warps, no spills (forward 16×64: 103-128). Unrolling the k²
# taps with tl.static_range instead of the loop in the kernels let the compiler hoist every tap's
# loads: 255 registers and spills. Timed on an H100 (benchmarks/triton_blocks.py, docs/benchmarks.md):
# 8 channels × 64 pixels was the fastest or within 7 % of it at both of issue 10's shapes and dtypes,
# 1.25-1.6× faster than 16×32; tiles of 32 channels were the slowest.
FWD_BLOCK = (8, 64)
BWD_BLOCK = (8, 64)
NUM_WARPS = 4

# launches by (kernel, mode), and the last grid of each kernel: tests check that the Triton path (in
# which mode, with how many blocks) really ran
launches: Counter[tuple[str, str]] = Counter()
last_grid: dict[str, tuple[int, ...]] = {}


def _evidence_fwd(
    fe,
    fr,
    w,
    ke,
    kr,
    s_out,
    phi_out,
    C,
    H,
    W,
    DIL,
    SB_W,
    SB_KE,
    SB_KR,
    K: tl.constexpr,
    SAME: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    hw = H * W
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # (P,) flattened pixels
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)  # (C,)
    p_ok = p < hw
    c_ok = c < C
    y = p // W
    x = p % W
    feat = b * C * hw + c[:, None].to(tl.int64) * hw  # (C, 1) offset of each channel plane
    # this sample's k² kernel planes (a kernel tensor may be a channel slice: its own batch stride)
    kw = w + b * SB_W
    kke = ke + b * SB_KE
    kkr = kr + b * SB_KR
    s = tl.full((BLOCK_C, BLOCK_P), 0.0, dtype=ACC)
    e = tl.full((BLOCK_C, BLOCK_P), 0.0, dtype=ACC)
    for j in range(K * K):
        ny = y + (j // K - (K - 1) // 2) * DIL
        nx = x + (j % K - (K - 1) // 2) * DIL
        ok = p_ok & (ny >= 0) & (ny < H) & (nx >= 0) & (nx < W)  # outside: the zero padding
        m = c_ok[:, None] & ok[None, :]
        q = feat + (ny * W + nx)[None, :]
        xe = tl.load(fe + q, mask=m, other=0.0).to(ACC)  # (C, P) neighbours of the sender
        wj = tl.load(kw + j * hw + p, mask=p_ok, other=0.0).to(ACC)[None, :]  # (1, P)
        kej = tl.load(kke + j * hw + p, mask=p_ok, other=0.0).to(ACC)[None, :]
        krj = tl.load(kkr + j * hw + p, mask=p_ok, other=0.0).to(ACC)[None, :]
        s += wj * xe
        if SAME:
            e += (kej + krj) * xe
        else:
            xr = tl.load(fr + q, mask=m, other=0.0).to(ACC)
            e += kej * xe + krj * xr
    m = c_ok[:, None] & p_ok[None, :]
    here = feat + p[None, :]
    f_r = tl.load(fr + here, mask=m, other=0.0).to(ACC)
    tl.store(s_out + here, s.to(s_out.dtype.element_ty), mask=m)
    tl.store(phi_out + here, (e + f_r * s).to(phi_out.dtype.element_ty), mask=m)


def _evidence_bwd(
    g_s,
    g_phi,
    fe,
    fr,
    w,
    ke,
    kr,
    s,
    g_fe,
    g_fr,
    g_w,
    g_ke,
    g_kr,
    B,
    C,
    H,
    W,
    DIL,
    SB_W,
    SB_KE,
    SB_KR,
    K: tl.constexpr,
    SAME: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    hw = H * W
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < hw
    c_ok = c < C
    y = p // W
    x = p % W
    feat = b * C * hw + c[:, None].to(tl.int64) * hw
    kw = w + b * SB_W
    kke = ke + b * SB_KE
    kkr = kr + b * SB_KR
    # partial kernel gradients of this channel block: g_w[pid_c, b, j, i] (likewise g_ke, g_kr)
    part = (pid_c.to(tl.int64) * B + b) * (K * K) * hw + p
    m0 = c_ok[:, None] & p_ok[None, :]
    here = feat + p[None, :]
    gp0 = tl.load(g_phi + here, mask=m0, other=0.0).to(ACC)
    gt0 = tl.load(g_s + here, mask=m0, other=0.0).to(ACC) + gp0 * tl.load(fr + here, mask=m0, other=0.0).to(ACC)
    direct = gp0 * tl.load(s + here, mask=m0, other=0.0).to(ACC)  # ∂Φ/∂f_r through f_r ⊙ S
    acc_e = tl.full((BLOCK_C, BLOCK_P), 0.0, dtype=ACC)
    acc_r = tl.full((BLOCK_C, BLOCK_P), 0.0, dtype=ACC)
    for j in range(K * K):
        oy = (j // K - (K - 1) // 2) * DIL
        ox = (j % K - (K - 1) // 2) * DIL
        # kernel gradients at this tile's pixels: neighbours i + o_j
        ny = y + oy
        nx = x + ox
        ok = p_ok & (ny >= 0) & (ny < H) & (nx >= 0) & (nx < W)
        m = c_ok[:, None] & ok[None, :]
        q = feat + (ny * W + nx)[None, :]
        xe = tl.load(fe + q, mask=m, other=0.0).to(ACC)
        xr = xe if SAME else tl.load(fr + q, mask=m, other=0.0).to(ACC)
        # a channel sum; the interpreter runs tl.standard._sum_combine (tl.sum's) as one numpy sum
        tl.store(g_w + part + j * hw, tl.reduce(gt0 * xe, 0, tl.standard._sum_combine), mask=p_ok)
        tl.store(g_ke + part + j * hw, tl.reduce(gp0 * xe, 0, tl.standard._sum_combine), mask=p_ok)
        tl.store(g_kr + part + j * hw, tl.reduce(gp0 * xr, 0, tl.standard._sum_combine), mask=p_ok)
        # input gradients at this tile's pixels: the pixels i − o_j whose tap j reads them
        ry = y - oy
        rx = x - ox
        ok = p_ok & (ry >= 0) & (ry < H) & (rx >= 0) & (rx < W)
        m = c_ok[:, None] & ok[None, :]
        r = ry * W + rx
        q = feat + r[None, :]
        gp = tl.load(g_phi + q, mask=m, other=0.0).to(ACC)
        gt = tl.load(g_s + q, mask=m, other=0.0).to(ACC) + gp * tl.load(fr + q, mask=m, other=0.0).to(ACC)
        wj = tl.load(kw + j * hw + r, mask=ok, other=0.0).to(ACC)[None, :]
        kej = tl.load(kke + j * hw + r, mask=ok, other=0.0).to(ACC)[None, :]
        krj = tl.load(kkr + j * hw + r, mask=ok, other=0.0).to(ACC)[None, :]
        if SAME:
            acc_e += wj * gt + (kej + krj) * gp
        else:
            acc_e += wj * gt + kej * gp
            acc_r += krj * gp
    if SAME:
        tl.store(g_fe + here, (acc_e + direct).to(g_fe.dtype.element_ty), mask=m0)
    else:
        tl.store(g_fe + here, acc_e.to(g_fe.dtype.element_ty), mask=m0)
        tl.store(g_fr + here, (acc_r + direct).to(g_fr.dtype.element_ty), mask=m0)


@functools.cache
def _kernel(name: str, interpret: bool):
    fn = {"fwd": _evidence_fwd, "bwd": _evidence_bwd}[name]
    if interpret:
        return InterpretedFunction(fn)
    # sizes and the dilation as plain runtime integers: one compiled kernel per (dtype, k, f_r = f_e),
    # not one per divisibility class of every size (the gathers are masked anyway)
    sizes = ["C", "H", "W", "DIL", "SB_W", "SB_KE", "SB_KR"] + (["B"] if name == "bwd" else [])
    return JITFunction(fn, do_not_specialize=sizes)


def _mode(t: Tensor) -> str:
    knobs = getattr(triton, "knobs", None)  # triton >= 3.4; before, the variable itself
    interpret = knobs.runtime.interpret if knobs is not None else os.environ.get("TRITON_INTERPRET") == "1"
    return "interpreter" if t.device.type == "cpu" or interpret else "compiled"


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _launch(name: str, ref: Tensor, grid: tuple[int, ...], *args, **meta) -> None:
    mode = _mode(ref)
    launches[(name, mode)] += 1
    last_grid[name] = grid
    with torch.cuda.device(ref.device) if ref.device.type == "cuda" else contextlib.nullcontext():
        _kernel(name, mode == "interpreter")[grid](*args, **meta)


def _batch_strides(*kernels: Tensor) -> list[int]:
    """The batch stride of each per-pixel kernel tensor (B, k², h, w); its k² planes must be contiguous
    (a channel slice of a conv's output is: the kernels of several pairs come from one conv)."""
    for k in kernels:
        if not samples_contiguous(k):
            raise ValueError(f"per-pixel kernels {tuple(k.shape)} need contiguous k²×h×w blocks; strides {k.stride()}")
    return [k.stride(0) for k in kernels]


def _grid(f: Tensor, block_c: int, block_p: int) -> tuple[int, int, int]:
    b, c, h, w = f.shape
    return triton.cdiv(h * w, block_p), triton.cdiv(c, block_c), b


def evidence_forward(
    f_e: Tensor,
    f_r: Tensor | None,
    w: Tensor,
    k_e: Tensor,
    k_r: Tensor,
    dilation: int,
    kernel_size: int,
    blocks: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """``(S, Φ)`` for inputs of one dtype: features contiguous, kernels with contiguous k²×h×w blocks (any
    batch stride); ``f_r=None``: the receiver is the sender.
    ``blocks``: (channels, pixels) per program, powers of two; default ``FWD_BLOCK``."""
    blocks = blocks or FWD_BLOCK
    b, c, h, wd = f_e.shape
    s = torch.empty_like(f_e)
    phi = torch.empty_like(f_e)
    same = f_r is None
    _launch(
        "fwd", f_e, _grid(f_e, *blocks),
        f_e, f_e if same else f_r, w, k_e, k_r, s, phi, c, h, wd, dilation, *_batch_strides(w, k_e, k_r),
        K=kernel_size, SAME=same, ACC=_acc(f_e.dtype), BLOCK_C=blocks[0], BLOCK_P=blocks[1],
        num_warps=NUM_WARPS,
    )  # fmt: skip
    return s, phi


def evidence_backward(
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
    blocks: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Gradients ``(g_fe, g_fr, g_K)``, ``g_K`` the kernels' ``(g_W, g_Kᵉ, g_Kʳ)`` stacked, (3, B, k², h, w);
    ``g_fr`` is ``None`` (folded into ``g_fe``) when ``f_r`` is ``None``. Inputs of one dtype, laid out as
    :func:`evidence_forward`'s;
    ``blocks``: default ``BWD_BLOCK``."""
    blocks = blocks or BWD_BLOCK
    bsz, c, h, wd = f_e.shape
    k2 = kernel_size * kernel_size
    same = f_r is None
    grid = _grid(f_e, *blocks)
    acc_dtype = torch.float64 if f_e.dtype == torch.float64 else torch.float32
    # per-channel-block partial sums of (g_W, g_Kᵉ, g_Kʳ); the kernel sees three (blocks, B, k², h, w) slices
    parts = torch.empty(3, grid[1], bsz, k2, h, wd, dtype=acc_dtype, device=f_e.device)
    g_fe = torch.empty_like(f_e)
    g_fr = None if same else torch.empty_like(f_e)
    _launch(
        "bwd", f_e, grid,
        g_s, g_phi, f_e, f_e if same else f_r, w, k_e, k_r, s, g_fe, g_fe if same else g_fr, *parts.unbind(0),
        bsz, c, h, wd, dilation, *_batch_strides(w, k_e, k_r),
        K=kernel_size, SAME=same, ACC=_acc(f_e.dtype), BLOCK_C=blocks[0], BLOCK_P=blocks[1],
        num_warps=NUM_WARPS,
    )  # fmt: skip
    return g_fe, g_fr, parts.sum(1).to(w.dtype)  # one reduction over the channel blocks
