"""VISTA structured attention: multi-scale message passing gated by low-rank attention tensors.

One module covers the paper's method and the official code's behaviour; presets only flip switches
(see ``PRESETS``). Notation follows ``shared/design/VISTA.md``:

- ``f_e`` sender feature, ``f_r`` receiver feature, both ``(B, C, h, w)`` on one grid;
- per dilation ``d``: a per-pixel message kernel ``W_d`` predicted from ``cat(f_e, f_r)`` and two
  evidence kernels ``K^e_d``, ``K^r_d``; the filtered sender ``S_d = D(f_e, W_d)``;
- evidence ``Φ_d = f_r ⊙ S_d + D(f_e, K^e_d) + D(f_r, K^r_d)``;
- the structured attention ``A_d = Σ_t v^t ⊗ m^t`` (CP rank ≤ T) inferred by unrolled mean-field updates;
- message ``M_d = A_d ⊙ S_d``, fused over dilations by a 1×1 conv.

The pixel-adaptive filter ``D`` and the evidence live in ``vista.models.filtering`` (fused Triton
kernels on CUDA, k² shifted products elsewhere), never materialising the ``B×C×k²×h×w`` unfold tensor
of the official code (``vista.models.reference`` keeps that algorithm as a test oracle and benchmark
baseline).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .filtering import message_evidence, pixel_adaptive_filter  # noqa: F401  (public here since before the split)
from .layers import conv_bn_relu

ChannelInit = Literal["uniform", "learned", "random"]
Fusion = Literal["residual", "official"]
EvalDraws = Literal["fixed", "fresh"]
DrawsOn = Literal["cpu", "device"]

# (f_e, f_r, W, K^e, K^r, dilation, kernel_size) -> (S, Φ)
EvidenceFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor | None, int, int], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class AttentionConfig:
    """Every switch of the structured attention module.

    Args:
        in_channels: channels of the backbone features, finest first (named c2, c3, c4, ...).
        width: channels C of the projected features the messages live in.
        rank: T, the number of rank-1 terms of each attention tensor; 0 = unstructured (A = Φ).
        inference_iters: mean-field rounds of the v↔m updates inside one attention tensor (≥ 1).
        mf_iters: outer message-passing rounds; each recomputes Φ from the updated receivers.
        channel_init: initial channel vectors v: ``uniform`` (1/C), ``learned`` (logits, one set per
            rank term and dilation, initialised from N(0, 1)) or ``random`` (softmax of N(0, 1) draws,
            as in the official code). With ``uniform`` init the T terms follow identical updates, so
            they coincide and A has rank 1 whatever ``rank`` says: an ablation switch, not a default.
        eval_draws: where ``random`` channel vectors come from in eval mode: ``fixed`` (a generator
            seeded per pair and dilation, so eval is bit-identical across calls) or ``fresh`` (the
            global CPU generator, a new draw every call, as the official code; ``official`` preset).
            Training always draws fresh vectors.
        draws_on: the generator of fresh ``random`` draws: ``cpu`` (the global CPU generator, then a copy
            to the features' device: the same numbers on every device, so the official preset reproduces
            the official outputs on a GPU) or ``device`` (the features' device generator: no host copy,
            so a CUDA graph can capture the step, e.g. ``torch.compile(mode="reduce-overhead")``; other
            numbers than on the CPU). ``fixed`` eval draws always come from their seeded CPU generator.
        sample_channels: in training, add reparameterised noise ``σ·ε`` (σ learned) to the v-logits;
            in eval the mean is used, so eval stays deterministic.
        dilations: dilation of each message kernel.
        kernel_size: spatial size k of the per-pixel kernels (odd).
        senders: names of the features sending messages (``c2``, ``c3``, ...).
        receivers: names of the features receiving messages.
        tau_m: temperature of the spatial (sigmoid) update.
        tau_v: temperature of the channel (softmax) update.
        update_channels: run the v half-step after each m half-step (paper); the official code only
            runs the m half-step.
        channel_prior: the v half-step keeps the initial logits as the categorical prior of the
            mean-field posterior, ``v ← softmax(ℓ + τ_v · mean(m ⊙ Φ))``. Without it
            (``v ← softmax(τ_v · mean(m ⊙ Φ))``) v forgets its start after one update, and while the
            evidence is small (at initialisation) every term lands on the same v: A is numerically rank 1.
            With ``uniform`` init (ℓ = 0) both updates are the same.
        gate_evidence: attention ``A = Φ ⊙ Σ_t v^t⊗m^t`` (official) instead of ``Σ_t v^t⊗m^t``.
        fusion: ``residual``: receiver update ``z_r = f_r + Σ_e M_{e→r}``, output ``concat_r z_r`` on the
            finest grid; ``official``: ``concat(messages, f_r)`` through two stride-2 3×3 conv+BN+ReLU.
    """

    in_channels: tuple[int, ...] = (512, 1024, 2048)
    width: int = 512
    rank: int = 3
    inference_iters: int = 1
    mf_iters: int = 1
    channel_init: ChannelInit = "uniform"
    eval_draws: EvalDraws = "fixed"
    draws_on: DrawsOn = "cpu"
    sample_channels: bool = False
    dilations: tuple[int, ...] = (1, 4, 8)
    kernel_size: int = 3
    senders: tuple[str, ...] = ("c2", "c3", "c4")
    receivers: tuple[str, ...] = ("c4",)
    tau_m: float = 1.0
    tau_v: float = 1.0
    update_channels: bool = True
    channel_prior: bool = True
    gate_evidence: bool = False
    fusion: Fusion = "residual"
    _names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "in_channels", tuple(int(c) for c in self.in_channels))
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        object.__setattr__(self, "senders", tuple(self.senders))
        object.__setattr__(self, "receivers", tuple(self.receivers))
        object.__setattr__(self, "_names", tuple(f"c{i + 2}" for i in range(len(self.in_channels))))
        self._validate()

    def _validate(self) -> None:
        def bad(key: str, value: object, why: str) -> ValueError:
            return ValueError(f"attention.{key}={value!r}: {why}")

        if not self.in_channels or any(c <= 0 for c in self.in_channels):
            raise bad("in_channels", self.in_channels, "need at least one positive channel count")
        if self.width <= 0:
            raise bad("width", self.width, "must be > 0")
        if self.rank < 0:
            raise bad("rank", self.rank, "must be >= 0 (0 = unstructured attention)")
        if self.inference_iters < 1:
            raise bad("inference_iters", self.inference_iters, "must be >= 1")
        if self.mf_iters < 1:
            raise bad("mf_iters", self.mf_iters, "must be >= 1")
        if self.channel_init not in ("uniform", "learned", "random"):
            raise bad("channel_init", self.channel_init, "choose uniform, learned or random")
        if self.eval_draws not in ("fixed", "fresh"):
            raise bad("eval_draws", self.eval_draws, "choose fixed or fresh")
        if self.draws_on not in ("cpu", "device"):
            raise bad("draws_on", self.draws_on, "choose cpu or device")
        if not self.dilations or any(d < 1 for d in self.dilations):
            raise bad("dilations", self.dilations, "need at least one dilation, each >= 1")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise bad("kernel_size", self.kernel_size, "must be a positive odd number")
        for key in ("senders", "receivers"):
            names = getattr(self, key)
            unknown = [n for n in names if n not in self._names]
            if not names or unknown or len(set(names)) != len(names):
                raise bad(key, names, f"need distinct names from {self._names}")
        if self.tau_m <= 0 or self.tau_v <= 0:
            raise bad("tau_m/tau_v", (self.tau_m, self.tau_v), "temperatures must be > 0")
        if self.fusion not in ("residual", "official"):
            raise bad("fusion", self.fusion, "choose residual or official")
        if self.fusion == "official" and (len(self.receivers) != 1 or self.mf_iters != 1):
            raise bad("fusion", self.fusion, "the official fusion needs one receiver and mf_iters=1")

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self._names

    @property
    def out_channels(self) -> int:
        """Channels of the module's output."""
        if self.fusion == "official":
            return (len(self.senders) + 1) * self.width
        return len(self.receivers) * self.width


PRESETS: dict[str, dict[str, Any]] = {
    # The method as the paper describes it: learned channel logits that give the T terms distinct
    # starting points (with uniform init they coincide and A collapses to rank 1), both mean-field
    # half-steps, residual receiver update; the output stays on the messages' grid and feeds the decoder.
    "paper": {"channel_init": "learned"},
    # The official module (AttentionGraphCondKernel): random channel vectors (fresh draws in eval too),
    # m half-step only, A = Φ ⊙ Σ v⊗m, rank 3, concat fusion through two stride-2 convs.
    # State_dict-compatible.
    "official": {
        "channel_init": "random",
        "eval_draws": "fresh",
        "update_channels": False,
        "gate_evidence": True,
        "fusion": "official",
        "rank": 3,
        "receivers": ("c4",),
        "senders": ("c2", "c3", "c4"),
    },
}


# --------------------------------------------------------------------------------------------------
# Structured attention by unrolled mean-field inference
# --------------------------------------------------------------------------------------------------


class AttentionMaps(NamedTuple):
    """The inferred attention of one sender→receiver pair at one dilation."""

    a: Tensor  # (B, C, h, w) attention tensor that gates the message
    v: Tensor | None  # (B, T, C) channel vectors on the simplex (None when T = 0)
    m: Tensor | None  # (B, T, h, w) spatial maps in (0, 1) (None when T = 0)


def mean_field(
    phi: Tensor,
    v_logits: Tensor,
    iters: int,
    *,
    tau_m: float = 1.0,
    tau_v: float = 1.0,
    update_channels: bool = True,
    channel_prior: bool = True,
    noise: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Unrolled mean-field updates of T independent (v, m) pairs given the evidence Φ.

    Args:
        phi: evidence ``(B, C, h, w)``.
        v_logits: initial channel logits ``ℓ`` ``(B, T, C)``.
        iters: rounds of ``m ← σ(τ_m Σ_c v_c Φ_c)`` then (if ``update_channels``)
            ``v ← softmax_c(ℓ + τ_v mean_hw(m ⊙ Φ))`` (``ℓ`` dropped without ``channel_prior``).
        noise: maps logits to perturbed logits (reparameterised sampling in training).

    Returns:
        ``v`` ``(B, T, C)`` on the simplex and ``m`` ``(B, T, h, w)`` in (0, 1).
    """
    perturb = noise if noise is not None else (lambda z: z)
    v = torch.softmax(perturb(v_logits), dim=-1)  # (B, T, C)
    m = phi.new_empty(0)
    for _ in range(iters):
        m = torch.einsum("btc,bchw->bthw", v, phi)  # (B, T, h, w)
        m = torch.sigmoid(m if tau_m == 1 else tau_m * m)  # (no multiply by 1: one op less per step)
        if update_channels:
            # (B, T, C); the temperature folded into the mean's divisor
            logits = torch.einsum("bthw,bchw->btc", m, phi) * (tau_v / phi[0, 0].numel())
            v = torch.softmax(perturb(logits + v_logits if channel_prior else logits), dim=-1)
    return v, m


def _is_channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _outer(v: Tensor, m: Tensor, channels_last: bool) -> Tensor:
    """``Σ_t v^t ⊗ m^t``: ``v`` (B, T, C), ``m`` (B, T, h, w) -> (B, C, h, w), channels-last or NCHW."""
    if not channels_last:
        return torch.einsum("btc,bthw->bchw", v, m)
    b, _, h, w = m.shape
    return torch.matmul(m.flatten(2).transpose(1, 2), v).view(b, h, w, -1).permute(0, 3, 1, 2)  # (B, hw, C)


def structured_tensor(v: Tensor, m: Tensor, phi: Tensor | None = None) -> Tensor:
    """``A = Σ_t v^t ⊗ m^t`` (CP rank ≤ T), times ``phi`` when given (the official gating).

    ``v`` (B, T, C), ``m`` (B, T, h, w) -> (B, C, h, w), in ``phi``'s layout when it is channels-last.
    """
    a = _outer(v, m, phi is not None and _is_channels_last(phi))
    return a if phi is None else a.mul_(phi)


class _GatedMessage(torch.autograd.Function):
    """``M = S ⊙ [Φ ⊙] Σ_t v^t ⊗ m^t`` without keeping the (B, C, h, w) attention tensor for backward:
    it is rebuilt from its T factors there."""

    @staticmethod
    def forward(ctx, s, phi, v, m, gate_evidence):  # type: ignore[override]
        # in the features' dtype: under autocast, v comes out of softmax in float32, and promoting to it
        # would cast S and Φ and build every (B, C, h, w) product of the message and its backward in float32
        dtype = torch.promote_types(s.dtype, phi.dtype)
        s, phi, v, m = (t.to(dtype) for t in (s, phi, v, m))
        ctx.save_for_backward(s, phi, v, m)
        ctx.gate = gate_evidence
        # built in S's layout: channels-last features keep their layout through the message (no copies)
        ctx.channels_last = _is_channels_last(s)
        a = _outer(v, m, ctx.channels_last)
        return (a.mul_(phi) if gate_evidence else a).mul_(s)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # type: ignore[override]
        s, phi, v, m = ctx.saved_tensors
        a = _outer(v, m, ctx.channels_last)  # (B, C, h, w), recomputed
        g_s_a = g * s  # ∂/∂(a ⊙ [Φ])
        if ctx.gate:
            g_phi = g_s_a * a
            g_a = g_s_a.mul_(phi)
            g_s = a.mul_(phi).mul_(g)
        else:
            g_phi = None
            g_a = g_s_a
            g_s = a.mul_(g)
        if ctx.channels_last and _is_channels_last(g_a):
            b, t, h, w = m.shape
            g_a = g_a.permute(0, 2, 3, 1).reshape(b, h * w, -1)  # (B, hw, C), a view
            g_v = torch.matmul(m.flatten(2), g_a)  # (B, T, C)
            g_m = torch.matmul(v, g_a.transpose(1, 2)).view(b, t, h, w)
        else:
            g_v = torch.einsum("bchw,bthw->btc", g_a, m)
            g_m = torch.einsum("bchw,btc->bthw", g_a, v)
        return g_s, g_phi, g_v, g_m, None


def gated_message(s: Tensor, phi: Tensor, v: Tensor, m: Tensor, *, gate_evidence: bool = False) -> Tensor:
    """Message ``M = A ⊙ S`` with ``A = Σ_t v^t ⊗ m^t`` (paper) or ``Φ ⊙ Σ_t v^t ⊗ m^t`` (official).

    Args:
        s: filtered sender (B, C, h, w); phi: evidence (B, C, h, w);
        v: channel vectors (B, T, C); m: spatial maps (B, T, h, w).
    """
    return _GatedMessage.apply(s, phi, v, m, gate_evidence)


# --------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------


class AttentionGatedMessage(nn.Module):
    """Messages from one sender to one receiver, over all dilations (official name: AttentionGatedMSG).

    Parameter names follow the official module so its weights load: ``kernel_prediction_{i}``
    (2C → k²), ``kernel_se_{i}`` and ``kernel_sr_{i}`` (C → k²), ``combination_msgs.0`` (nD·C → C).
    """

    def __init__(self, cfg: AttentionConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.seed = seed  # of the fixed eval draws (``random`` init, ``eval_draws="fixed"``)
        c, k = cfg.width, cfg.kernel_size
        for i, d in enumerate(cfg.dilations, start=1):
            pad = d * (k - 1) // 2
            self.add_module(f"kernel_prediction_{i}", nn.Conv2d(2 * c, k * k, k, dilation=d, padding=pad))
            self.add_module(f"kernel_se_{i}", nn.Conv2d(c, k * k, k, dilation=d, padding=pad))
            self.add_module(f"kernel_sr_{i}", nn.Conv2d(c, k * k, k, dilation=d, padding=pad))
        self.combination_msgs = nn.Sequential(nn.Conv2d(len(cfg.dilations) * c, c, 1), nn.ReLU(inplace=True))
        # the bias of the receiver half of W's conv (W's own bias goes with the sender half); not saved
        self.register_buffer("zero_bias", torch.zeros(k * k), persistent=False)
        n_dil = len(cfg.dilations)
        if cfg.rank > 0 and cfg.channel_init == "learned":
            # N(0, 1) logits, as the official code's draws: distinct starts for the T terms
            self.channel_logits = nn.Parameter(torch.randn(n_dil, cfg.rank, c))
        if cfg.rank > 0 and cfg.sample_channels:
            self.channel_log_sigma = nn.Parameter(torch.full((n_dil,), math.log(0.1)))
        self.evidence: EvidenceFn = message_evidence

    def _init_logits(self, i: int, phi: Tensor) -> Tensor:
        b, c = phi.shape[:2]
        t = self.cfg.rank
        if self.cfg.channel_init == "learned":
            return self.channel_logits[i].unsqueeze(0).expand(b, t, c)
        if self.cfg.channel_init == "random":
            # Eval with fixed draws: T vectors from a CPU generator seeded by (pair, dilation), shared by
            # every sample, the same at every call, for any batch and device. Otherwise fresh draws: from
            # the features' device generator (draws_on="device"), or from the global CPU generator, one
            # (B, C) draw per term in the official code's order (outputs do not depend on the device, and
            # the official preset reproduces the official outputs).
            if not self.training and self.cfg.eval_draws == "fixed":
                gen = torch.Generator().manual_seed(1_000_003 * (self.seed + 1) + i)
                draws = torch.randn(1, t, c, generator=gen).expand(b, t, c)
            elif self.cfg.draws_on == "device":
                return torch.randn(b, t, c, device=phi.device, dtype=phi.dtype)
            else:
                draws = torch.stack([torch.randn(b, c) for _ in range(t)], dim=1)
            draws = draws.to(phi.dtype)
            if phi.device.type == "cuda" and not torch.compiler.is_compiling():
                # a copy from pageable memory waits for the GPU's queue: one stall per pair and dilation,
                # which left the official preset launch-bound at small batches. From pinned memory the
                # copy is queued like a kernel (the pinned block is not reused before it has run).
                # Compiled graphs make their own copies.
                draws = draws.pin_memory()
            return draws.to(device=phi.device, non_blocking=True)
        return phi.new_zeros(b, t, c)  # uniform: softmax(0) = 1/C

    def infer(self, i: int, phi: Tensor) -> tuple[Tensor, Tensor] | None:
        """Channel vectors ``v`` (B, T, C) and spatial maps ``m`` (B, T, h, w) at dilation index ``i``
        (0-based) from the evidence ``phi`` (B, C, h, w); ``None`` when T = 0 (unstructured)."""
        cfg = self.cfg
        if cfg.rank == 0:
            return None
        noise = None
        if cfg.sample_channels and self.training:
            sigma = self.channel_log_sigma[i].exp()
            noise = lambda z: z + sigma * torch.randn_like(z)  # noqa: E731
        return mean_field(
            phi,
            self._init_logits(i, phi),
            cfg.inference_iters,
            tau_m=cfg.tau_m,
            tau_v=cfg.tau_v,
            update_channels=cfg.update_channels,
            channel_prior=cfg.channel_prior,
            noise=noise,
        )

    def attention(self, i: int, phi: Tensor) -> AttentionMaps:
        """The attention tensor with its factors at dilation index ``i`` (for inspection and tests)."""
        vm = self.infer(i, phi)
        if vm is None:
            return AttentionMaps(phi, None, None)  # unstructured: the evidence itself gates
        return AttentionMaps(structured_tensor(*vm, phi if self.cfg.gate_evidence else None), *vm)

    def conv_pieces(self, n: int) -> dict[str, tuple[list[Tensor], list[Tensor]]]:
        """The convolutions that predict the kernels of dilation number ``n`` (1-based), by the feature
        they read: ``{"e": (weights, biases), "r": (weights, biases)}``, each list ``[W part, K part]``,
        ``k²`` output channels each (``K`` = ``K^e`` on the sender, ``K^r`` on the receiver).

        The 2C-input conv ``W = conv(cat(f_e, f_r))`` is split into its sender and receiver halves, each
        joining the evidence conv that reads the same feature (no concatenated (B, 2C, h, w) tensor; see
        :func:`predict_kernels`). ``W``'s bias goes with the sender half.
        """
        pred: nn.Conv2d = getattr(self, f"kernel_prediction_{n}")
        conv_e: nn.Conv2d = getattr(self, f"kernel_se_{n}")
        conv_r: nn.Conv2d = getattr(self, f"kernel_sr_{n}")
        w_e, w_r = pred.weight.split(pred.in_channels // 2, dim=1)  # one split: its backward is one cat
        return {
            "e": ([w_e, conv_e.weight], [pred.bias, conv_e.bias]),
            "r": ([w_r, conv_r.weight], [self.zero_bias, conv_r.bias]),
        }

    def _kernels(self, n: int, sender: Tensor, receiver: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(W, K^e, K^r)``, each (B, k², h, w), of dilation number ``n`` for this pair alone
        (``(W, K^e + K^r, None)`` when the sender is the receiver: see :func:`predict_kernels`)."""
        return predict_kernels([(self, sender, receiver)], n)[0]

    def forward(
        self,
        receiver: Tensor,
        sender: Tensor,
        maps: list[AttentionMaps] | None = None,
        kernels: Sequence[tuple[Tensor, Tensor, Tensor | None]] | None = None,
    ) -> Tensor:
        """Fused message ``(B, C, h, w)`` from ``sender`` to ``receiver`` (both ``(B, C, h, w)``).

        Args:
            maps: if given, the attention of each dilation is appended to it.
            kernels: ``(W, K^e, K^r)`` of each dilation when already predicted (by
                :func:`predict_kernels` for several pairs at once); computed here otherwise.
        """
        cfg = self.cfg
        messages = []
        for i in range(len(cfg.dilations)):
            w, k_e, k_r = kernels[i] if kernels is not None else self._kernels(i + 1, sender, receiver)
            s, phi = self.evidence(sender, receiver, w, k_e, k_r, cfg.dilations[i], cfg.kernel_size)
            vm = self.infer(i, phi)
            if vm is None:
                messages.append(phi * s)  # T = 0: M_d = Φ_d ⊙ S_d
            else:
                messages.append(gated_message(s, phi, *vm, gate_evidence=cfg.gate_evidence))
            if maps is not None:
                with torch.no_grad():
                    a = phi if vm is None else structured_tensor(*vm, phi if cfg.gate_evidence else None)
                maps.append(AttentionMaps(a, *(vm or (None, None))))
        return self.combination_msgs(torch.cat(messages, dim=1))


def predict_kernels(
    pairs: Sequence[tuple[AttentionGatedMessage, Tensor, Tensor]], n: int
) -> list[tuple[Tensor, Tensor, Tensor | None]]:
    """``(W, K^e, K^r)`` of dilation number ``n`` (1-based) for each ``(pair module, sender, receiver)``.

    Every kernel-predicting conv reads one feature (:meth:`AttentionGatedMessage.conv_pieces`); the convs
    of all pairs that read the same tensor run as one conv with all their output channels (the official
    preset's three pairs share the receiver c4, which is also a sender: 6 convs per dilation become 3,
    each input read once), and its output is split in one op. Same function as one conv per piece.

    A pair whose sender is its receiver (the same tensor) gets ``(W, K^e + K^r, None)``: convolution is
    linear, so ``W = conv(cat(f, f))`` is one conv of ``f`` with the two halves of its weight summed, and
    the evidence's two filters of ``f`` are one filter with ``K^e + K^r``, predicted by one conv with the
    summed weights (:func:`message_evidence` takes ``k_r=None``). Same function and gradients (the summed
    weights pass each piece the gradient it had), half the kernel maps for that pair.
    """
    k2 = pairs[0][0].cfg.kernel_size ** 2
    pred: nn.Conv2d = getattr(pairs[0][0], f"kernel_prediction_{n}")
    groups: dict[int, tuple[Tensor, list[Tensor], list[Tensor]]] = {}  # id(input) -> (input, weights, biases)
    slots = []  # per pair: (group, index of its W piece) of the sender's and the receiver's conv
    for module, sender, receiver in pairs:
        pieces = module.conv_pieces(n)
        if sender is receiver:
            (we, ke), (be, bke) = pieces["e"]
            (wr, kr), (_, bkr) = pieces["r"]  # the receiver half of W has no bias
            _, weights, biases = groups.setdefault(id(sender), (sender, [], []))
            slots.append([(id(sender), len(weights))])
            weights += [we + wr, ke + kr]
            biases += [be, bke + bkr]
            continue
        slot = []
        for role, x in (("e", sender), ("r", receiver)):
            _, weights, biases = groups.setdefault(id(x), (x, [], []))
            slot.append((id(x), len(weights)))
            weights += pieces[role][0]
            biases += pieces[role][1]
        slots.append(slot)
    outs = {
        key: F.conv2d(x, torch.cat(ws), torch.cat(bs), padding=pred.padding, dilation=pred.dilation).split(k2, 1)
        for key, (x, ws, bs) in groups.items()
    }
    kernels: list[tuple[Tensor, Tensor, Tensor | None]] = []
    for slot in slots:
        if len(slot) == 1:  # sender is receiver
            ((g, i),) = slot
            kernels.append((outs[g][i], outs[g][i + 1], None))
        else:
            (ge, ie), (gr, ir) = slot
            kernels.append((outs[ge][ie] + outs[gr][ir], outs[ge][ie + 1], outs[gr][ir + 1]))
    return kernels


class StructuredAttention(nn.Module):
    """Multi-scale VISTA attention: backbone features in, fused features out.

    Input: a list of backbone features, finest first (``c2`` at stride 8, ``c3``, ``c4``...). Each used
    feature is projected to ``width`` channels (conv3×3 + BN + ReLU; module ``conv{i+3}``, ResNet stage
    naming) and nearest-resized to the grid of the finest feature that takes part (``c2`` by default;
    senders and receivers from ``c3`` on put the messages on the coarser, cheaper stride-16 grid).
    Messages flow along every sender→receiver pair
    (module ``attention_MSG_{s}{r}``, stage numbers).

    Output: ``(B, cfg.out_channels, h, w)`` on that grid (``residual`` fusion) or at 1/4 of it
    (``official`` fusion, i.e. stride 32 from stride-8 features).
    """

    def __init__(self, cfg: AttentionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        names = cfg.feature_names
        stage = {n: i + 3 for i, n in enumerate(names)}
        used = [n for n in names if n in cfg.senders or n in cfg.receivers]
        # official registration order: conv5, conv4, conv3
        for n in reversed(used):
            self.add_module(f"conv{stage[n]}", conv_bn_relu(cfg.in_channels[names.index(n)], cfg.width))
        self.pairs: list[tuple[str, str, str]] = []  # (module name, sender, receiver)
        for r in cfg.receivers:
            for s in cfg.senders:
                name = f"attention_MSG_{stage[s]}{stage[r]}"
                self.add_module(name, AttentionGatedMessage(cfg, seed=len(self.pairs)))
                self.pairs.append((name, s, r))
        self._stage = stage
        if cfg.fusion == "official":
            c4 = cfg.out_channels
            self.combination_msgs_51 = conv_bn_relu(c4, c4, stride=2, bias=True)
            self.combination_msgs_52 = conv_bn_relu(c4, c4, stride=2, bias=True)

    @property
    def out_channels(self) -> int:
        return self.cfg.out_channels

    def set_evidence_fn(self, fn: EvidenceFn) -> None:
        """Swap the evidence computation of every pair (the unfold oracle, for tests and benchmarks)."""
        for name, _, _ in self.pairs:
            getattr(self, name).evidence = fn

    def _project(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        cfg = self.cfg
        if len(feats) != len(cfg.in_channels):
            raise ValueError(f"expected {len(cfg.in_channels)} features {cfg.feature_names}, got {len(feats)}")
        used = [i for i, n in enumerate(cfg.feature_names) if n in cfg.senders or n in cfg.receivers]
        grid = feats[used[0]].shape[-2:]  # the finest feature that takes part (features come finest first)
        out = {}
        for n, x, cin in zip(cfg.feature_names, feats, cfg.in_channels, strict=True):
            if x.shape[1] != cin:
                raise ValueError(f"feature {n}: expected {cin} channels, got {tuple(x.shape)}")
            if n in cfg.senders or n in cfg.receivers:
                y = getattr(self, f"conv{self._stage[n]}")(x)  # (B, C, h_n, w_n)
                out[n] = y if y.shape[-2:] == grid else F.interpolate(y, size=grid, mode="nearest")
        return out

    def forward(
        self, feats: Sequence[Tensor], return_maps: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, list[AttentionMaps]]]:
        """Fuse backbone features.

        Args:
            feats: backbone features, finest first, channels ``cfg.in_channels``.
            return_maps: also return the attention of every pair (last round), keyed by pair name.
        """
        cfg = self.cfg
        f = self._project(feats)  # name -> (B, C, h, w), all on the messages' grid
        z = dict(f)
        maps: dict[str, list[AttentionMaps]] = {}
        messages: dict[str, list[Tensor]] = {}
        for _ in range(cfg.mf_iters):
            messages = {r: [] for r in cfg.receivers}
            maps = {}
            kernels: dict[str, list[tuple[Tensor, Tensor, Tensor | None]]] = {name: [] for name, _, _ in self.pairs}
            todo = [(getattr(self, name), z[s], z[r]) for name, s, r in self.pairs]  # this round's inputs
            for n in range(1, len(cfg.dilations) + 1):
                for (name, _, _), k in zip(self.pairs, predict_kernels(todo, n), strict=True):
                    kernels[name].append(k)
            for name, s, r in self.pairs:
                maps[name] = []
                pair = getattr(self, name)
                messages[r].append(pair(z[r], z[s], maps[name] if return_maps else None, kernels[name]))
            if cfg.fusion == "residual":
                # synchronous update: every pair of this round saw the previous round's states
                z = {**z, **{r: f[r] + torch.stack(messages[r]).sum(0) for r in cfg.receivers}}
        if cfg.fusion == "official":
            r = cfg.receivers[0]
            out = self.combination_msgs_52(self.combination_msgs_51(torch.cat([*messages[r], f[r]], 1)))
        else:
            out = torch.cat([z[r] for r in cfg.receivers], dim=1)
        return (out, maps) if return_maps else out


def attention_config(preset: str = "paper", **overrides: Any) -> AttentionConfig:
    """The config of a preset with ``overrides`` applied (unknown keys raise, naming the key)."""
    if preset not in PRESETS:
        raise ValueError(f"attention preset {preset!r}: choose one of {sorted(PRESETS)}")
    known = {f for f in AttentionConfig.__dataclass_fields__ if not f.startswith("_")}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"attention: unknown option(s) {unknown}; known: {sorted(known)}")
    return replace(AttentionConfig(), **{**PRESETS[preset], **overrides})


def create_attention(
    preset: str = "paper", in_channels: Sequence[int] = (512, 1024, 2048), **overrides: Any
) -> StructuredAttention:
    """Build the structured attention module.

    Args:
        preset: ``paper`` (default) or ``official``.
        in_channels: channels of the backbone features, finest first (c2, c3, c4).
        **overrides: any field of :class:`AttentionConfig`.

    Returns:
        A module mapping the list of backbone features to the fused output.
    """
    return StructuredAttention(attention_config(preset, in_channels=tuple(in_channels), **overrides))
