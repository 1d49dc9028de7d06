"""The fused Triton kernels of the message/evidence op against the unfold oracle.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (``backend="triton"``), through the
same op, autograd glue and launch code as on CUDA; each test checks that the kernels really ran (the
launch counter of their mode), so a silent fallback to the shifted products cannot pass. The
interpreter is slow: the cases are few and small, picked to cover together batch > 1, dilations 1–8,
k 3 and 5, padding larger than the grid, non-square and 1-pixel grids, f_r = f_e, several channel and
pixel blocks per sample, float64 and float32. The ``gpu`` tests compile the kernels on CUDA.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

from vista.models.filtering import message_evidence, triton_available
from vista.models.reference import unfold_message_evidence


@pytest.fixture(autouse=True)
def _needs_triton() -> None:
    if not triton_available():
        msg = "triton is not importable (it comes with the CUDA build of torch the README installs)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def _launches(name: str, mode: str) -> int:
    from vista.models import triton_filter

    return triton_filter.launches[(name, mode)]


def _inputs(b: int, c: int, h: int, w: int, k: int, same: bool, dtype: torch.dtype, device: str = "cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def t(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()

    f_e = t(b, c, h, w)
    f_r = f_e if same else t(b, c, h, w)
    return f_e, f_r, [t(b, k * k, h, w) for _ in range(3)]


def _compare(f_e, f_r, kernels, d: int, k: int, fn, **tol) -> None:  # noqa: ANN001
    """Values and all input gradients of ``fn`` vs the unfold oracle, for random output gradients."""
    same = f_r is f_e
    inputs = [f_e, *kernels] if same else [f_e, f_r, *kernels]
    ours = fn(f_e, f_r, *kernels, d, k)
    # the oracle in float64 on the same (rounded) inputs; for f_r = f_e, one leaf
    ref_inputs = [x.detach().double().requires_grad_() for x in inputs]
    ref_f_e, ref_f_r = ref_inputs[0], ref_inputs[0] if same else ref_inputs[1]
    ref = unfold_message_evidence(ref_f_e, ref_f_r, *ref_inputs[-3:], d, k)
    g = torch.Generator().manual_seed(1)
    # upstream gradients representable in the tested dtype, so that both sides see the same ones
    grads_out = [torch.randn(o.shape, generator=g).to(f_e.device, f_e.dtype).double() for o in ref]
    for a, r in zip(ours, ref, strict=True):
        assert a.dtype == f_e.dtype
        torch.testing.assert_close(a.double(), r, **tol)
    g_ours = torch.autograd.grad(ours, inputs, [x.to(f_e.dtype) for x in grads_out])
    g_ref = torch.autograd.grad(ref, ref_inputs, grads_out)
    for a, r in zip(g_ours, g_ref, strict=True):
        assert a.dtype == f_e.dtype
        torch.testing.assert_close(a.double(), r, **tol)


# b, c, h, w, dilation, k, f_r = f_e, dtype, (channel, pixel) block of a program (None: the default)
CASES = [
    (2, 3, 5, 7, 1, 3, False, torch.float64, None),
    (2, 4, 3, 4, 8, 3, True, torch.float64, None),  # padding 8 > the 3×4 grid
    (3, 2, 6, 4, 2, 5, False, torch.float64, None),
    (2, 5, 4, 6, 5, 5, True, torch.float32, None),  # k 5, padding 10 > the grid
    (2, 1, 1, 1, 3, 3, False, torch.float32, None),  # a 1-pixel grid: only the centre tap sees data
    (2, 6, 1, 9, 4, 3, False, torch.float32, None),  # a single row
    (1, 9, 5, 7, 7, 3, False, torch.float64, (4, 16)),  # 3 channel × 3 pixel blocks, ragged tails
    (2, 7, 4, 5, 6, 3, True, torch.float32, (4, 8)),
]


@pytest.mark.parametrize(("b", "c", "h", "w", "d", "k", "same", "dtype", "blocks"), CASES)
def test_triton_interpreter_matches_unfold_oracle(
    b: int, c: int, h: int, w: int, d: int, k: int, same: bool, dtype: torch.dtype, blocks, monkeypatch
) -> None:
    from vista.models import triton_filter

    if blocks is not None:
        monkeypatch.setattr(triton_filter, "FWD_BLOCK", blocks)
        monkeypatch.setattr(triton_filter, "BWD_BLOCK", blocks)
    fwd, bwd = _launches("fwd", "interpreter"), _launches("bwd", "interpreter")
    f_e, f_r, kernels = _inputs(b, c, h, w, k, same, dtype, seed=b * 1000 + c * 100 + d)
    tol = {} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    _compare(f_e, f_r, kernels, d, k, functools.partial(message_evidence, backend="triton"), **tol)
    assert (_launches("fwd", "interpreter") - fwd, _launches("bwd", "interpreter") - bwd) == (1, 1)
    if blocks is not None:  # the cases meant to span several blocks do
        grid = (-(-h * w // blocks[1]), -(-c // blocks[0]), b)
        assert triton_filter.last_grid["fwd"] == triton_filter.last_grid["bwd"] == grid
        assert min(grid[:2]) > 1


@pytest.mark.parametrize(("same", "d", "k", "shape"), [(False, 2, 3, (1, 2, 3, 4)), (True, 4, 3, (1, 2, 3, 2))])
def test_triton_interpreter_gradcheck(same: bool, d: int, k: int, shape: tuple[int, ...]) -> None:
    fwd = _launches("fwd", "interpreter")
    f_e, f_r, kernels = _inputs(*shape, k, same, torch.float64)
    fn = functools.partial(message_evidence, dilation=d, kernel_size=k, backend="triton")
    if same:
        assert torch.autograd.gradcheck(lambda a, *ks: fn(a, a, *ks), (f_e, *kernels), fast_mode=True)
    else:
        assert torch.autograd.gradcheck(lambda a, r, *ks: fn(a, r, *ks), (f_e, f_r, *kernels), fast_mode=True)
    assert _launches("fwd", "interpreter") > fwd


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_kernels_sliced_from_one_conv_output_are_read_in_place(backend: str) -> None:
    """The model slices W, Kᵉ, Kʳ out of one conv output (channel slices: each sample's k²×h×w block is
    contiguous, the batch stride is not k²·h·w): the op reads them where they are, with no copy, and
    computes the oracle's values and gradients. The Triton kernels copy a kernel in another layout
    (channels_last); the shifted products read any layout (their copies, of NCHW features into the
    channels-last order they compute in, do not depend on the kernels' layout), and make none at all for
    channels-last features."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Copies(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            self.n += func.overloadpacket in (torch.ops.aten.clone, torch.ops.aten.copy_, torch.ops.aten._to_copy)
            return func(*args, **(kwargs or {}))

    b, c, h, w, k, d = 2, 5, 4, 6, 3, 2
    g = torch.Generator().manual_seed(3)
    f_e, f_r = (torch.randn(b, c, h, w, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2))
    big = torch.randn(b, 4 * k * k, h, w, generator=g, dtype=torch.float64).requires_grad_()
    kernels = list(big.split(k * k, dim=1)[1:])  # three slices at batch stride 4k²·h·w
    assert not kernels[0].is_contiguous() and kernels[0][0].is_contiguous()
    fn = functools.partial(message_evidence, backend=backend)
    fwd = _launches("fwd", "interpreter")
    with Copies() as copies:
        fn(f_e, f_r, *kernels, d, k)
    in_place = copies.n
    assert in_place == 0 if backend == "triton" else in_place <= 2  # torch: S and Φ back to NCHW
    assert _launches("fwd", "interpreter") == fwd + (backend == "triton")
    _compare(f_e, f_r, kernels, d, k, fn)
    strided = kernels[0].detach().to(memory_format=torch.channels_last).requires_grad_()
    with Copies() as copies:
        fn(f_e, f_r, strided, *kernels[1:], d, k)
    assert copies.n == in_place + (backend == "triton")
    _compare(f_e, f_r, [strided, *kernels[1:]], d, k, fn)
    if backend == "torch":
        cl = [t.detach().to(memory_format=torch.channels_last).requires_grad_() for t in (f_e, f_r)]
        with Copies() as copies:
            s, phi = fn(*cl, *kernels, d, k)
        assert copies.n == 0
        assert s.is_contiguous(memory_format=torch.channels_last) and phi.stride() == cl[0].stride()
        _compare(*cl, kernels, d, k, fn)


def test_triton_path_passes_opcheck() -> None:
    """The fake kernels describe the Triton outputs (shapes, strides, dtypes) as they are."""
    f_e, f_r, kernels = _inputs(2, 3, 4, 5, 3, False, torch.float32)
    fwd, bwd = _launches("fwd", "interpreter"), _launches("bwd", "interpreter")
    args = (f_e, f_r, *kernels, 2, 3, "triton")
    torch.library.opcheck(torch.ops.vista.message_evidence.default, args)
    assert _launches("fwd", "interpreter") > fwd and _launches("bwd", "interpreter") > bwd
    bwd = _launches("bwd", "interpreter")
    f_e, f_r, *kernels = (t.detach() for t in (f_e, f_r, *kernels))
    s, _ = torch.ops.vista.message_evidence(f_e, f_r, *kernels, 2, 3, "triton")
    args = (torch.randn_like(s), torch.randn_like(s), f_e, f_r, *kernels, s, 2, 3, "triton")
    torch.library.opcheck(torch.ops.vista.message_evidence_backward.default, args)
    assert _launches("bwd", "interpreter") > bwd


def test_model_with_triton_kernels_matches_the_unfold_oracle() -> None:
    """The module the model runs, every pair (c3→c4, and c4→c4 with f_r = f_e) and dilation (1, 4, 8 on a
    4×4 grid) on the Triton path, vs the unfold algorithm: output and every parameter's gradient."""
    from vista.models import create_attention

    m = create_attention("paper", in_channels=(8, 12, 16), width=6, senders=("c3", "c4")).double().train()
    x = [torch.randn(2, c, 16 >> i, 16 >> i, dtype=torch.float64) for i, c in enumerate((8, 12, 16))]
    fwd, bwd = _launches("fwd", "interpreter"), _launches("bwd", "interpreter")
    m.set_evidence_fn(functools.partial(message_evidence, backend="triton"))
    out = m(x)
    out.square().mean().backward()
    ours = {n: p.grad.clone() for n, p in m.named_parameters()}
    assert (_launches("fwd", "interpreter") - fwd, _launches("bwd", "interpreter") - bwd) == (6, 6)
    m.zero_grad()
    m.set_evidence_fn(unfold_message_evidence)
    ref = m(x)
    ref.square().mean().backward()
    torch.testing.assert_close(out, ref)
    for n, p in m.named_parameters():
        torch.testing.assert_close(ours[n], p.grad, msg=n)


# -- compiled kernels on CUDA ----------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("b", "c", "h", "w", "d", "k", "same"),
    [
        (2, 70, 33, 29, 1, 3, False),
        (2, 64, 32, 32, 4, 3, True),
        (3, 40, 17, 23, 8, 3, False),
        (2, 33, 9, 30, 6, 5, False),
    ],
)
def test_triton_cuda_matches_unfold_oracle(
    b: int, c: int, h: int, w: int, d: int, k: int, same: bool, dtype: torch.dtype
) -> None:
    fwd = _launches("fwd", "compiled")
    f_e, f_r, kernels = _inputs(b, c, h, w, k, same, dtype, device="cuda")
    # float32: accumulation order differs from the oracle's; bf16: outputs and gradients are rounded
    # to bf16 (8 mantissa bits), the kernels accumulate in float32
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 5e-2}
    _compare(f_e, f_r, kernels, d, k, message_evidence, **tol)  # backend "auto": Triton on CUDA
    assert _launches("fwd", "compiled") == fwd + 1


@pytest.mark.gpu
def test_model_on_cuda_takes_the_triton_path_and_matches_the_oracle() -> None:
    from vista.models import create_attention

    m = create_attention("official", in_channels=(8, 12, 16), width=40, eval_draws="fixed").cuda().eval()
    x = [torch.randn(2, c, 32 >> i, 32 >> i, device="cuda") for i, c in enumerate((8, 12, 16))]
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # a tight float32 check
    try:
        fwd = _launches("fwd", "compiled")
        ours = m(x)
        assert _launches("fwd", "compiled") == fwd + 9  # 3 pairs × 3 dilations, backend "auto"
        m.set_evidence_fn(unfold_message_evidence)
        torch.testing.assert_close(ours, m(x), rtol=1e-4, atol=1e-4)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
