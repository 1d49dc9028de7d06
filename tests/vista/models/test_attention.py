"""Properties of the structured attention module (VISTA.md, "Properties every implementation must show")."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vista.models import attention_config, create_attention
from vista.models.attention import (
    AttentionGatedMessage,
    gated_message,
    mean_field,
    message_evidence,
    pixel_adaptive_filter,
)
from vista.models.reference import unfold_message_evidence

IN = (8, 12, 16)  # tiny c2, c3, c4 channels


def feats(
    b: int = 2, grid: int = 8, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> list[torch.Tensor]:
    """c2, c3, c4 at strides 8, 16, 32 (grid, grid/2, grid/4)."""
    return [torch.randn(b, c, grid >> i, grid >> i, dtype=dtype, device=device) for i, c in enumerate(IN)]


def tiny(preset: str = "paper", **kw) -> torch.nn.Module:
    return create_attention(preset, in_channels=IN, width=kw.pop("width", 6), **kw)


# -- shapes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "kw", "shape"),
    [
        ("paper", {}, (2, 6, 8, 8)),
        ("paper", {"receivers": ("c3", "c4")}, (2, 12, 8, 8)),
        ("paper", {"senders": ("c4",), "rank": 0}, (2, 6, 2, 2)),  # c4 alone: messages on its grid
        ("paper", {"senders": ("c3", "c4")}, (2, 6, 4, 4)),
        ("paper", {"dilations": (1, 2), "kernel_size": 5, "mf_iters": 2, "inference_iters": 3}, (2, 6, 8, 8)),
        ("paper", {"channel_init": "random", "sample_channels": True}, (2, 6, 8, 8)),
        ("official", {}, (2, 24, 2, 2)),
        ("official", {"rank": 0}, (2, 24, 2, 2)),
    ],
)
def test_output_shapes(preset: str, kw: dict, shape: tuple[int, ...], device: torch.device) -> None:
    m = tiny(preset, **kw).to(device)
    out = m(feats(device=device))
    assert out.shape == shape == (2, m.out_channels, *shape[2:])
    assert torch.isfinite(out).all()


def test_bad_config_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"attention\.rank=-1"):
        tiny(rank=-1)
    with pytest.raises(ValueError, match=r"attention\.kernel_size=4"):
        tiny(kernel_size=4)
    with pytest.raises(ValueError, match=r"attention\.senders=\('c9',\)"):
        tiny(senders=("c9",))
    with pytest.raises(ValueError, match=r"attention\.draws_on='gpu': choose cpu or device"):
        tiny(draws_on="gpu")
    with pytest.raises(ValueError, match="unknown option.*'ranks'"):
        tiny(ranks=3)
    with pytest.raises(ValueError, match="preset 'paperr'"):
        create_attention("paperr")
    with pytest.raises(ValueError, match=r"feature c3: expected 12 channels"):
        tiny()([torch.randn(1, 8, 8, 8), torch.randn(1, 5, 4, 4), torch.randn(1, 16, 2, 2)])


# -- the pixel-adaptive filter ----------------------------------------------------------------------


def _random_filter_cases(n: int = 25) -> list[tuple[int, ...]]:
    g = torch.Generator().manual_seed(1234)

    def r(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    # b, c, h, w, dilation, kernel size, seed (plain torch: these tests also run where hypothesis is absent)
    return [(r(1, 2), r(1, 5), r(1, 9), r(1, 9), r(1, 5), (1, 3, 5)[r(0, 2)], r(0, 2**16)) for _ in range(n)]


# every dilation a preset's messages use, on a grid smaller than the largest (taps fall off the border)
PRESET_DILATIONS = sorted({d for preset in ("paper", "official") for d in attention_config(preset).dilations})


@pytest.mark.parametrize(
    ("b", "c", "h", "w", "d", "k", "seed"),
    [*_random_filter_cases(), *((2, 3, 9, 11, d, 3, 100 + d) for d in PRESET_DILATIONS)],
)
@pytest.mark.parametrize("same", [False, True])
def test_model_evidence_path_matches_unfold_reference(
    b: int, c: int, h: int, w: int, d: int, k: int, seed: int, same: bool
) -> None:
    """The op the attention calls (``message_evidence``: the filtered sender and the evidence, values and
    gradients) against the unfold oracle, over random shapes and every dilation of the presets."""
    g = torch.Generator().manual_seed(seed)

    def t(n: int) -> torch.Tensor:
        return torch.randn(b, n, h, w, generator=g, dtype=torch.float64).requires_grad_()

    f_e = t(c)
    f_r = f_e if same else t(c)
    kernels = [t(k * k) for _ in range(3)]
    ours = message_evidence(f_e, f_r, *kernels, d, k, backend="torch")
    ref = unfold_message_evidence(f_e, f_r, *kernels, d, k)
    for a, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, r)
    inputs = [f_e, *kernels] if same else [f_e, f_r, *kernels]
    weights = [torch.randn(r.shape, generator=g, dtype=torch.float64) for r in ref]  # not a symmetric loss
    g_ours = torch.autograd.grad(sum((o * wt).sum() for o, wt in zip(ours, weights, strict=True)), inputs)
    g_ref = torch.autograd.grad(sum((r * wt).sum() for r, wt in zip(ref, weights, strict=True)), inputs)
    for a, r in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize(("d", "k"), [(1, 3), (4, 3), (2, 5), (3, 1)])
def test_filter_with_constant_kernel_is_a_depthwise_conv(d: int, k: int) -> None:
    x = torch.randn(2, 4, 10, 11, dtype=torch.float64)
    taps = torch.randn(k * k, dtype=torch.float64)
    kern = taps.view(1, k * k, 1, 1).expand(2, k * k, 10, 11)
    weight = taps.view(1, 1, k, k).repeat(4, 1, 1, 1)
    expected = F.conv2d(x, weight, dilation=d, padding=d * (k - 1) // 2, groups=4)
    torch.testing.assert_close(pixel_adaptive_filter(x, kern, d, k), expected)


def _evidence_inputs(b: int, c: int, h: int, w: int, k: int, seed: int, same: bool, layout: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    def t(n: int) -> torch.Tensor:
        x = torch.randn(b, n, h, w, generator=g, dtype=torch.float64).to(dtype)
        return x.contiguous(memory_format=fmt).requires_grad_()

    f_e = t(c)
    f_r = f_e if same else t(c)
    # the model's kernels: channel slices of one conv output in the features' layout
    kernels = list(t(3 * k * k).split(k * k, dim=1))
    return f_e, f_r, kernels


def _oracle_values_and_grads(f_e, f_r, kernels, d: int, k: int, ours) -> tuple[list, list, list, list]:  # noqa: ANN001
    same = f_r is f_e
    inputs = [f_e, *kernels] if same else [f_e, f_r, *kernels]
    leaves = [x.detach().double().requires_grad_() for x in inputs]
    ref = unfold_message_evidence(leaves[0], leaves[0] if same else leaves[1], *leaves[-3:], d, k)
    g = torch.Generator().manual_seed(7)
    grads_out = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(f_e.dtype) for o in ref]
    g_ours = torch.autograd.grad(ours, inputs, grads_out)
    g_ref = torch.autograd.grad(ref, leaves, [x.double() for x in grads_out])
    return list(ours), list(ref), list(g_ours), list(g_ref)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize(("b", "c", "h", "w", "d", "k", "seed"), _random_filter_cases(20))
def test_message_evidence_matches_the_oracle_over_random_shapes_and_layouts(
    b: int, c: int, h: int, w: int, d: int, k: int, seed: int, layout: str
) -> None:
    """The model's path (shifted products, channels-last compute) against the unfold oracle, float64:
    random shapes with dilations up to 5 (padding larger than the grid), batch > 1, both input layouts,
    kernels sliced from one tensor; the outputs keep the features' layout."""
    for same in (False, True):
        f_e, f_r, kernels = _evidence_inputs(b, c, h, w, k, seed, same, layout, torch.float64)
        ours = message_evidence(f_e, f_r, *kernels, d, k, backend="torch")
        for o in ours:
            assert o.stride() == f_e.stride() and o.dtype == torch.float64
        vals, ref, g_ours, g_ref = _oracle_values_and_grads(f_e, f_r, kernels, d, k, ours)
        for a, r in zip(vals + g_ours, ref + g_ref, strict=True):
            torch.testing.assert_close(a, r)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize(("d", "k"), [(1, 3), (4, 3), (8, 3), (2, 5)])
def test_message_evidence_in_bf16_on_cpu_rounds_once(d: int, k: int, layout: str) -> None:
    """bf16 features on the CPU are filtered in float32 and rounded once: values and gradients within a
    few bf16 ulps of the float64 oracle on the same (bf16) inputs, in the inputs' dtype and layout."""
    f_e, f_r, kernels = _evidence_inputs(2, 16, 9, 11, k, 3, False, layout, torch.bfloat16)
    ours = message_evidence(f_e, f_r, *kernels, d, k, backend="torch")
    assert all(o.dtype == torch.bfloat16 and o.stride() == f_e.stride() for o in ours)
    vals, ref, g_ours, g_ref = _oracle_values_and_grads(f_e, f_r, kernels, d, k, ours)
    for a, r in zip(vals + g_ours, ref + g_ref, strict=True):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.double(), r, rtol=1.6e-2, atol=1e-2 * float(r.abs().max()))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_message_evidence_gradcheck_channels_last(layout: str) -> None:
    f_e, f_r, kernels = _evidence_inputs(2, 3, 4, 5, 3, 11, False, layout, torch.float64)
    fn = lambda a, r, *ks: message_evidence(a, r, *ks, 2, 3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (f_e, f_r, *kernels))


@pytest.mark.parametrize(("same", "d", "k"), [(False, 1, 3), (True, 2, 3), (False, 1, 5)])
def test_message_evidence_gradcheck(same: bool, d: int, k: int) -> None:
    def t(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    f_e, f_r = t(1, 2, 4, 5), t(1, 2, 4, 5)
    kernels = [t(1, k * k, 4, 5) for _ in range(3)]
    if same:
        assert torch.autograd.gradcheck(lambda a, *ks: message_evidence(a, a, *ks, d, k), (f_e, *kernels))
    else:
        assert torch.autograd.gradcheck(lambda a, b, *ks: message_evidence(a, b, *ks, d, k), (f_e, f_r, *kernels))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_message_evidence_of_one_feature_takes_the_summed_kernel(layout: str) -> None:
    """Sender = receiver: ``k_r=None`` with ``k_e = K^e + K^r`` is the same function as the two kernels
    apart (values; the input gradient; K^e and K^r both get the summed kernel's gradient), and the op
    merges the two filters itself when given both (K^r's gradient equal to K^e's)."""
    f, _, (w, k_e, k_r) = _evidence_inputs(2, 5, 6, 7, 3, 3, True, layout, torch.float64)
    k_sum = (k_e + k_r).detach().requires_grad_()
    apart = message_evidence(f, f, w, k_e, k_r, 2, 3)
    merged = message_evidence(f, f, w, k_sum, None, 2, 3)
    ref = unfold_message_evidence(f, f, w, k_e, k_r, 2, 3)
    for a, b, r in zip(apart, merged, ref, strict=True):
        torch.testing.assert_close(a, r)
        torch.testing.assert_close(b, r)
    g = [torch.randn_like(t) for t in ref]
    g_f, g_w, g_ke, g_kr = torch.autograd.grad(apart, (f, w, k_e, k_r), g)
    g_f_ref, g_w_ref, g_ke_ref, g_kr_ref = torch.autograd.grad(ref, (f, w, k_e, k_r), g)
    g_f_m, g_w_m, g_sum = torch.autograd.grad(merged, (f, w, k_sum), g)
    for a, b, r in ((g_f, g_f_m, g_f_ref), (g_w, g_w_m, g_w_ref), (g_ke, g_sum, g_ke_ref), (g_kr, g_sum, g_kr_ref)):
        torch.testing.assert_close(a, r)
        torch.testing.assert_close(b, r)
    assert torch.autograd.gradcheck(lambda a, *ks: message_evidence(a, a, *ks, None, 2, 3), (f, w, k_sum))


def test_message_evidence_refuses_a_missing_k_r_for_two_features() -> None:
    f_e, f_r, (w, k_e, _) = _evidence_inputs(1, 2, 3, 4, 3, 0, False, "nchw", torch.float64)
    with pytest.raises(ValueError, match="k_r=None .* needs f_r to be f_e"):
        message_evidence(f_e, f_r, w, k_e, None, 1, 3)


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_a_pair_whose_sender_is_its_receiver_predicts_the_summed_kernels(preset: str) -> None:
    """The c4→c4 pair: W from one conv with the two halves of its weight summed and K^e + K^r from one
    conv with summed weights, so 2 kernel maps instead of 3 and a two-filter evidence. The pair's message
    and every gradient (feature, all parameters) equal those of the pair's own three convs on
    ``cat(f, f)``, ``f`` and ``f`` through the official algorithm with both kernels."""
    m = tiny(preset, channel_init="learned").double().train()
    name = next(n for n, s, r in m.pairs if s == r)
    pair = getattr(m, name)
    x = torch.randn(2, m.cfg.width, 8, 8, dtype=torch.float64, requires_grad=True)
    kernels = [pair._kernels(n, x, x) for n in range(1, len(m.cfg.dilations) + 1)]
    assert all(len(k) == 3 and k[2] is None and k[1].shape[1] == m.cfg.kernel_size**2 for k in kernels)
    torch.manual_seed(3)
    ours = pair(x, x)
    separate = []
    for n in range(1, len(m.cfg.dilations) + 1):
        convs = [getattr(pair, f"{p}_{n}") for p in ("kernel_prediction", "kernel_se", "kernel_sr")]
        separate.append((convs[0](torch.cat([x, x], 1)), convs[1](x), convs[2](x)))
    pair.evidence = unfold_message_evidence
    torch.manual_seed(3)
    ref = pair(x, x, kernels=separate)
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ref)
    leaves = [x, *pair.parameters()]
    for a, r in zip(torch.autograd.grad(ours, leaves, g), torch.autograd.grad(ref, leaves, g), strict=True):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("gate", [False, True])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_gated_message_matches_autograd_formula_and_gradcheck(gate: bool, layout: str) -> None:
    """Both layouts of the features (channels-last ones keep theirs through the message)."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    def t(*shape: int) -> torch.Tensor:
        x = torch.randn(*shape, dtype=torch.float64)
        return (x.contiguous(memory_format=fmt) if x.dim() == 4 and shape[1] > 2 else x).requires_grad_()

    s, phi, v, m = t(2, 3, 4, 5), t(2, 3, 4, 5), t(2, 2, 3), t(2, 2, 4, 5)
    a = torch.einsum("btc,bthw->bchw", v, m)
    expected = (a * phi if gate else a) * s
    out = gated_message(s, phi, v, m, gate_evidence=gate)
    torch.testing.assert_close(out, expected)
    assert out.is_contiguous(memory_format=fmt)
    g = torch.randn(expected.shape, dtype=torch.float64).contiguous(memory_format=fmt)
    got = torch.autograd.grad(out, (s, phi, v, m) if gate else (s, v, m), g)
    ref = torch.autograd.grad(expected, (s, phi, v, m) if gate else (s, v, m), g)
    for a_, r_ in zip(got, ref, strict=True):
        torch.testing.assert_close(a_, r_)
    assert torch.autograd.gradcheck(lambda *x: gated_message(*x, gate_evidence=gate), (s, phi, v, m))


def test_gated_message_stays_in_the_features_dtype_under_autocast() -> None:
    """Under bf16 autocast v comes out of softmax in float32; the (B, C, h, w) message and its gradients
    stay in the features' bf16 instead of being lifted to float32, and match the float32 formula."""
    g = torch.Generator().manual_seed(0)
    s, phi, m = (torch.rand(2, 4, 3, 5, generator=g) for _ in range(3))
    m = m[:, :2]
    v = torch.softmax(torch.randn(2, 2, 4, generator=g), -1)
    leaves = [s.bfloat16(), phi.bfloat16(), v, m.bfloat16()]
    leaves = [t.requires_grad_() for t in leaves]
    out = gated_message(*leaves, gate_evidence=True)
    assert out.dtype == torch.bfloat16
    ref = (torch.einsum("btc,bthw->bchw", v, m) * phi * s).double()
    torch.testing.assert_close(out.double(), ref, rtol=3e-2, atol=1e-3)
    out.float().sum().backward()
    assert [t.grad.dtype for t in leaves] == [torch.bfloat16, torch.bfloat16, torch.float32, torch.bfloat16]


def test_pairs_reading_one_feature_share_one_conv() -> None:
    """The kernel-predicting convs of all pairs that read the same feature at one dilation run as one
    conv (6 pairs over 3 features: 3 convs per dilation, not 12) and compute what each pair's own convs do,
    values and gradients."""
    from vista.models.attention import predict_kernels

    class Convs(torch.utils._python_dispatch.TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            Convs.n += func.overloadpacket == torch.ops.aten.convolution
            return func(*args, **(kwargs or {}))

    m = tiny(receivers=("c3", "c4")).double()
    z = {n: torch.randn(2, 6, 8, 8, dtype=torch.float64, requires_grad=True) for n in ("c2", "c3", "c4")}
    todo = [(getattr(m, name), z[s], z[r]) for name, s, r in m.pairs]
    assert len(todo) == 6
    for n in (1, 2, 3):
        with Convs():
            Convs.n = 0
            merged = predict_kernels(todo, n)
            assert Convs.n == 3
        alone = [pair._kernels(n, f_e, f_r) for pair, f_e, f_r in todo]  # sender is receiver: one conv
        for a, b in zip(merged, alone, strict=True):
            for x, y in zip(a, b, strict=True):
                torch.testing.assert_close(x, y)
        weights = [torch.randn_like(x) for k in merged for x in k if x is not None]
        leaves = [*z.values(), *m.parameters()]
        outs_m = [x for k in merged for x in k if x is not None]
        outs_a = [x for k in alone for x in k if x is not None]
        g_merged = torch.autograd.grad(outs_m, leaves, weights, allow_unused=True)
        g_alone = torch.autograd.grad(outs_a, leaves, weights, allow_unused=True)
        for x, y in zip(g_merged, g_alone, strict=True):
            assert (x is None) == (y is None)
            if x is not None:
                torch.testing.assert_close(x, y)


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_module_with_unfold_oracle_gives_same_output(preset: str) -> None:
    m = tiny(preset, channel_init="learned").double().eval()
    x = [f.double() for f in feats()]
    ours = m(x)
    m.set_evidence_fn(unfold_message_evidence)
    torch.testing.assert_close(ours, m(x))


# -- the structured attention -----------------------------------------------------------------------


def _maps(m: torch.nn.Module, x: list[torch.Tensor]):
    _, maps = m(x, return_maps=True)
    return [a for per_pair in maps.values() for a in per_pair]


@pytest.mark.parametrize("init", ["uniform", "learned", "random"])
def test_spatial_maps_in_unit_interval_and_channel_vectors_on_simplex(init: str) -> None:
    m = tiny(rank=3, inference_iters=2, channel_init=init).eval()
    maps = _maps(m, feats())
    assert len(maps) == 3 * 3  # 3 pairs x 3 dilations
    for a in maps:
        assert a.v is not None and a.m is not None
        assert a.v.shape == (2, 3, 6) and a.m.shape == (2, 3, 8, 8)
        assert ((a.m > 0) & (a.m < 1)).all()
        assert (a.v >= 0).all()
        torch.testing.assert_close(a.v.sum(-1), torch.ones(2, 3))


@pytest.mark.parametrize("rank", [1, 2, 3, 5])
def test_attention_tensor_has_cp_rank_at_most_t(rank: int) -> None:
    # width 8 > rank so that the bound is informative
    m = tiny(rank=rank, channel_init="random", width=8).double().eval()
    for a in _maps(m, [f.double() for f in feats()]):
        for sample in a.a:  # (C, h, w)
            s = torch.linalg.svdvals(sample.reshape(sample.shape[0], -1))
            assert int((s > 1e-9 * s[0]).sum()) <= rank
    # with random v the terms differ, so the rank is reached
    s = torch.linalg.svdvals(_maps(m, [f.double() for f in feats()])[0].a[0].reshape(8, -1))
    assert int((s > 1e-9 * s[0]).sum()) == rank


def test_rank_zero_is_the_unstructured_path() -> None:
    m = tiny(rank=0).double().eval()
    pair: AttentionGatedMessage = m.attention_MSG_55
    phi = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    att = pair.attention(0, phi)
    assert att.v is None and att.m is None
    assert att.a is phi  # A = Φ, as in the official code
    # and no structured-attention parameters are created
    assert not any("channel_" in n for n, _ in m.named_parameters())


def test_uniform_init_terms_coincide_learned_terms_differ() -> None:
    x = feats()
    uni = _maps(tiny(rank=3, channel_init="uniform").eval(), x)[0]
    torch.testing.assert_close(uni.v[:, 0], uni.v[:, 2])
    lrn = _maps(tiny(rank=3, channel_init="learned").eval(), x)[0]
    assert not torch.allclose(lrn.v[:, 0], lrn.v[:, 2])


@pytest.mark.parametrize(
    ("key", "a", "b"), [("rank", 1, 3), ("inference_iters", 1, 3), ("mf_iters", 1, 2), ("tau_m", 1.0, 3.0)]
)
def test_output_changes_with_inference_hyperparameters(key: str, a, b) -> None:
    x = feats()
    torch.manual_seed(1)
    m1 = tiny(channel_init="learned", **{key: a}).eval()
    torch.manual_seed(1)
    m2 = tiny(channel_init="learned", **{key: b}).eval()
    own = m2.state_dict()  # share all weights of equal shape (channel logits differ in T)
    m2.load_state_dict({k: v for k, v in m1.state_dict().items() if own[k].shape == v.shape}, strict=False)
    assert not torch.allclose(m1(x), m2(x), atol=1e-6)


def test_mean_field_converges_for_small_evidence() -> None:
    phi = 0.1 * torch.randn(2, 16, 6, 6, dtype=torch.float64)
    logits = torch.randn(2, 3, 16, dtype=torch.float64)
    steps = [mean_field(phi, logits, n) for n in (20, 21)]
    for x, y in zip(steps[0], steps[1], strict=True):
        assert (x - y).abs().max() < 1e-10
    # and it actually moved away from the initial channel vectors
    assert (steps[0][0] - torch.softmax(logits, -1)).abs().max() > 1e-3


def test_eval_is_bit_identical_across_calls_paper_preset() -> None:
    m = tiny(channel_init="learned", sample_channels=True, inference_iters=2).eval()
    x = feats()
    torch.manual_seed(1)
    a = m(x)
    torch.manual_seed(2)
    b = m(x)
    assert torch.equal(a, b)


def test_channel_sampling_is_stochastic_in_training_only() -> None:
    m = tiny(channel_init="learned", sample_channels=True).train()
    x = feats()
    assert not torch.equal(m(x), m(x))
    m.eval()
    assert torch.equal(m(x), m(x))


@pytest.mark.parametrize(
    "kw",
    [
        {"channel_init": "learned", "sample_channels": True, "inference_iters": 2, "mf_iters": 2},
        {"channel_init": "uniform"},
        {"rank": 0},
    ],
)
def test_every_parameter_gets_a_finite_nonzero_gradient(kw: dict) -> None:
    m = tiny(**kw).double().train()
    m([f.double() for f in feats()]).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_official_preset_parameter_count() -> None:
    m = create_attention("official")  # in_channels 512/1024/2048, width 512
    assert sum(p.numel() for p in m.parameters()) == 95_881_971
    assert sum(p.numel() for p in m.attention_MSG_35.parameters()) == 1_284_689


def test_paper_preset_is_the_default() -> None:
    cfg = attention_config()
    assert (cfg.channel_init, cfg.update_channels, cfg.channel_prior, cfg.gate_evidence, cfg.fusion) == (
        "learned",
        True,
        True,
        False,
        "residual",
    )
    assert (cfg.eval_draws, attention_config("official").eval_draws) == ("fixed", "fresh")


# -- the default model's attention has rank T (the structure is not degenerate) ---------------------

# relative singular value counted as rank. float64 round-off sits near 1e-16; at initialisation the evidence
# is small and a term's share can be ~1e-8 (1e-8 failed 1 seed in 30 for vista_mnv3), still far above round-off
RANK_TOL = 1e-12


def _neck_maps(model: torch.nn.Module, x: torch.Tensor):
    with torch.no_grad():
        _, maps = model.neck(model.backbone(x)[1:], return_maps=True)
    return [a for per_pair in maps.values() for a in per_pair]


def _ranks(model: torch.nn.Module, x: torch.Tensor) -> set[int]:
    ranks = set()
    for att in _neck_maps(model, x):
        for a in att.a:  # (C, h, w) per sample
            s = torch.linalg.svdvals(a.reshape(a.shape[0], -1))
            ranks.add(int((s > RANK_TOL * s[0]).sum()))
    return ranks


@pytest.mark.parametrize("name", ["vista_r18", "vista_mnv3"])
def test_default_model_attention_has_rank_t_at_init_and_after_a_step(name: str) -> None:
    from vista.models import create_model

    model = create_model(name, tasks=("depth",)).double()  # no overrides: the paper preset as shipped
    t = model.neck.cfg.rank
    assert t == 3
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    model.eval()
    assert _ranks(model, x) == {t}
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x)["depth"].log().mean().backward()
    opt.step()
    model.eval()
    assert _ranks(model, x) == {t}
    # the same measure sees the collapse of the uniform init: every term equal, rank 1
    uniform = create_model(name, tasks=("depth",), attention={"channel_init": "uniform"}).double().eval()
    assert _ranks(uniform, x) == {1}


def test_rank_changes_the_function_of_the_default_model() -> None:
    from vista.models import create_model

    x = torch.randn(1, 3, 64, 64)
    torch.manual_seed(3)
    r1 = create_model("vista_r18", tasks=("depth",), attention={"rank": 1}).eval()
    torch.manual_seed(3)
    r3 = create_model("vista_r18", tasks=("depth",), attention={"rank": 3}).eval()
    # share every weight; the rank-1 model gets the first term's channel logits of the rank-3 one
    state = {k: (v[:, :1] if "channel_logits" in k else v) for k, v in r3.state_dict().items()}
    r1.load_state_dict(state)
    with torch.no_grad():
        feats3 = r3.backbone(x)[1:]
        out1, out3 = r1.neck(feats3), r3.neck(feats3)
    # the messages are small at initialisation, but the change is far above float32 round-off
    assert (out1 - out3).abs().max() > 1e-5 * out3.abs().max()


@pytest.mark.parametrize("init", ["uniform", "learned", "random"])
@pytest.mark.parametrize("sample", [False, True])
@pytest.mark.parametrize("mf_iters", [1, 2])
def test_eval_is_bit_identical_for_every_init_outside_official(init: str, sample: bool, mf_iters: int) -> None:
    m = tiny(channel_init=init, sample_channels=sample, inference_iters=2, mf_iters=mf_iters).eval()
    x = feats()
    torch.manual_seed(1)
    a = m(x)
    torch.manual_seed(2)  # another global RNG state must not matter
    b = m(x)
    assert torch.equal(a, b)
    # nor the batch a sample is evaluated in (random draws are shared by the samples; equal up to the
    # round-off of batch-size-dependent conv algorithms)
    torch.testing.assert_close(m([f[:1] for f in x]), a[:1])


@pytest.mark.parametrize("draws_on", ["cpu", "device"])
def test_random_init_draws_fresh_vectors_in_training(draws_on: str) -> None:
    m = tiny(channel_init="random", draws_on=draws_on).train()
    x = feats()
    assert not torch.equal(m(x), m(x))
    torch.manual_seed(5)
    first = m(x)
    torch.manual_seed(5)
    assert torch.equal(first, m(x))  # from the global generator of the features' device: seeded, reproducible


def test_official_preset_keeps_fresh_random_draws_in_eval() -> None:
    m = tiny("official").eval()
    x = feats()
    assert not torch.equal(m(x), m(x))  # its documented behaviour (official bug 3), kept for fidelity
    fixed = tiny("official", eval_draws="fixed").eval()
    assert torch.equal(fixed(x), fixed(x))


def test_channel_updates_keep_the_prior_logits() -> None:
    phi = 1e-3 * torch.randn(2, 8, 5, 5, dtype=torch.float64)  # small evidence, as at initialisation
    logits = torch.randn(2, 3, 8, dtype=torch.float64)
    v, _ = mean_field(phi, logits, 1)
    # with the prior, v stays near its own start, so the three terms stay apart
    torch.testing.assert_close(v, torch.softmax(logits, -1), atol=1e-3, rtol=0)
    v_literal, _ = mean_field(phi, logits, 1, channel_prior=False)
    # without it, every term lands on (nearly) the same vector
    assert (v_literal[:, 0] - v_literal[:, 2]).abs().max() < 1e-3 < (v[:, 0] - v[:, 2]).abs().max()


@pytest.mark.gpu
def test_bf16_autocast_forward_backward_cuda() -> None:
    m = tiny(channel_init="learned").cuda().train()
    x = feats(device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = m(x)
    out.float().square().mean().backward()
    assert torch.isfinite(out.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.gpu
@pytest.mark.parametrize(("preset", "kw"), [("official", {}), ("official", {"draws_on": "device"}), ("paper", {})])
def test_a_training_step_does_not_synchronise_with_the_gpu(preset: str, kw: dict) -> None:
    """The random channel vectors are copied from pinned memory (or drawn on the GPU) and the Triton op
    launches without a sync: the CPU queues a whole forward+backward ahead of the GPU (small batches are
    launch-bound otherwise)."""
    torch.manual_seed(0)
    m = tiny(preset, **kw).cuda().train()
    x = feats(device="cuda")
    m(x).square().mean().backward()  # warm-up: Triton compiles, cuDNN picks algorithms
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    cpu_rng = torch.get_rng_state()
    try:
        m(x).square().mean().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # device draws leave the CPU generator alone (the official preset's default draws from it)
    assert torch.equal(torch.get_rng_state(), cpu_rng) == (kw.get("draws_on") == "device" or preset == "paper")


def test_bf16_autocast_forward_backward_cpu() -> None:
    m = tiny(channel_init="learned").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(feats())
    out.float().square().mean().backward()
    assert torch.isfinite(out.float()).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_no_hard_coded_cuda_in_the_library() -> None:
    """Official bug 5: `.cuda()` everywhere. The library must follow its inputs' device."""
    from pathlib import Path

    import vista

    root = Path(vista.__file__).parent
    offenders = [str(p) for p in root.rglob("*.py") if ".cuda()" in p.read_text()]
    assert offenders == []
