"""The registered op ``vista::message_evidence``: backend choice, op registration, ``torch.compile``.

Its values and gradients against the unfold oracle: tests/vista/models/test_attention.py (shifted products)
and tests/vista/models/test_triton_filter.py (Triton kernels).
"""

from __future__ import annotations

import logging
import sys

import pytest
import torch

from vista.models import filtering
from vista.models.filtering import message_evidence
from vista.models.reference import unfold_message_evidence


def _inputs(b: int = 2, c: int = 3, h: int = 5, w: int = 4, k: int = 3, dtype: torch.dtype = torch.float64):
    def t(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, dtype=dtype, requires_grad=True)

    return t(b, c, h, w), t(b, c, h, w), [t(b, k * k, h, w) for _ in range(3)]


def test_auto_backend_on_cpu_is_the_shifted_products_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_triton(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the Triton path ran on CPU tensors with backend='auto'")

    if filtering.triton_available():
        from vista.models import triton_filter

        monkeypatch.setattr(triton_filter, "evidence_forward", no_triton)
        monkeypatch.setattr(triton_filter, "evidence_backward", no_triton)
    f_e, f_r, kernels = _inputs()
    inputs = [f_e, f_r, *kernels]
    ours = message_evidence(f_e, f_r, *kernels, 2, 3)
    g_ours = torch.autograd.grad(sum((t * (i + 1)).sum() for i, t in enumerate(ours)), inputs)
    ref = message_evidence(f_e, f_r, *kernels, 2, 3, backend="torch")  # the shifted products, named
    g_ref = torch.autograd.grad(sum((t * (i + 1)).sum() for i, t in enumerate(ref)), inputs)
    for a, r in zip([*ours, *g_ours], [*ref, *g_ref], strict=True):  # the same code path: bit for bit
        assert torch.equal(a, r)
    oracle = unfold_message_evidence(f_e, f_r, *kernels, 2, 3)
    for a, r in zip(ours, oracle, strict=True):
        torch.testing.assert_close(a, r)


def test_unknown_backend_names_the_choices() -> None:
    f_e, f_r, kernels = _inputs()
    with pytest.raises(ValueError, match=r"backend='cuda'.*'auto', 'torch', 'triton'"):
        message_evidence(f_e, f_r, *kernels, 1, 3, backend="cuda")  # type: ignore[arg-type]


def test_without_triton_auto_falls_back_and_triton_raises(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "vista.models.triton_filter", None)  # `import` raises ImportError
    filtering._triton_module.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="vista.models.filtering"):
            assert not filtering.triton_available()
            assert not filtering.triton_available()
        assert [r.getMessage() for r in caplog.records if "triton is not importable" in r.getMessage()] != []
        assert len(caplog.records) == 1  # said once, not at every call
        f_e, f_r, kernels = _inputs()
        message_evidence(f_e, f_r, *kernels, 1, 3)  # auto: shifted products
        with pytest.raises(RuntimeError, match="triton is not importable"):
            message_evidence(f_e, f_r, *kernels, 1, 3, backend="triton")
    finally:
        monkeypatch.undo()
        filtering._triton_module.cache_clear()


@pytest.mark.parametrize("same", [False, True, "merged"])
def test_op_registration_passes_opcheck(same: bool | str) -> None:
    """Schema, fake (meta) kernel, autograd registration and AOT dispatch of the op, as torch checks them
    (``merged``: the sender is the receiver and k_r is None, k_e holding K^e + K^r)."""
    f_e, f_r, kernels = _inputs(b=2, c=2, h=3, w=4)
    if same == "merged":
        kernels = [*kernels[:2], None]
    args = (f_e, None if same else f_r, *kernels, 2, 3, "torch")
    torch.library.opcheck(torch.ops.vista.message_evidence.default, args)
    # the backward op (not differentiable itself: no double backward), on plain tensors
    f_e, f_r, *kernels = (t if t is None else t.detach() for t in (f_e, f_r, *kernels))
    s, _ = torch.ops.vista.message_evidence(f_e, None if same else f_r, *kernels, 2, 3, "torch")
    args = (torch.randn_like(s), torch.randn_like(s), f_e, None if same else f_r, *kernels, s, 2, 3, "torch")
    torch.library.opcheck(torch.ops.vista.message_evidence_backward.default, args)


@pytest.mark.parametrize("same", [False, True])
def test_torch_compile_traces_the_op_without_a_graph_break(same: bool) -> None:
    """``fullgraph=True`` raises on any graph break; AOTAutograd traces the op through its fake kernel and
    registered backward. Values and gradients equal the unfold oracle's. (``aot_eager``: the tracing
    without inductor's code generation, which takes ~10 s on a 2-core CPU and adds nothing around an
    opaque op.)"""

    def step(f_e, f_r, w, k_e, k_r):  # noqa: ANN001, ANN202
        s, phi = message_evidence(f_e, f_e if same else f_r, w, k_e, k_r, 2, 3)
        return (torch.sigmoid(phi) * s).sum()

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    f_e, f_r, kernels = _inputs()
    inputs = [f_e, *kernels] if same else [f_e, f_r, *kernels]
    loss = compiled(f_e, f_r, *kernels)
    grads = torch.autograd.grad(loss, inputs)
    s, phi = unfold_message_evidence(f_e, f_e if same else f_r, *kernels, 2, 3)
    ref = (torch.sigmoid(phi) * s).sum()
    torch.testing.assert_close(loss, ref)
    for a, r in zip(grads, torch.autograd.grad(ref, inputs), strict=True):
        torch.testing.assert_close(a, r)
