"""The `official` preset computes the official module's function and loads its weights."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import shared_path
from vista.models import create_attention


@pytest.fixture(scope="module")
def vectors() -> dict:
    return torch.load(shared_path("data", "vista_official", "vectors.pt"), weights_only=True)


@pytest.fixture
def full_fp32():
    """The official vectors are float32 results: on CUDA, convs and matmuls must not drop to TF32
    (cuDNN allows TF32 convs by default, which costs ~5e-4 relative error on Hopper)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def official(vectors: dict, **kw) -> torch.nn.Module:
    ins = tuple(int(c) for c in vectors["in_channels"])
    return create_attention("official", in_channels=ins, width=int(vectors["width"]), **kw)


def test_official_state_dict_loads_strictly(vectors: dict) -> None:
    m = official(vectors)
    result = m.load_state_dict(vectors["state_dict"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(m.state_dict()) == set(vectors["state_dict"])
    for k, v in m.state_dict().items():
        assert v.shape == vectors["state_dict"][k].shape, k


@pytest.mark.parametrize("rank", [0, 1, 3, 5])
def test_official_preset_reproduces_the_official_outputs(
    vectors: dict, rank: int, device: torch.device, full_fp32: None
) -> None:
    m = official(vectors, rank=rank)
    m.load_state_dict(vectors["state_dict"], strict=True)
    m.to(device).eval()
    torch.manual_seed(int(vectors["seed_before_forward"]))
    with torch.no_grad():
        out = m([vectors[k].to(device) for k in ("c2", "c3", "c4")]).cpu()
    ref = vectors[f"out_rank{rank}"]
    assert out.shape == ref.shape
    rel = ((out - ref).abs().max() / ref.abs().max()).item()
    assert rel <= 1e-5, rel


def test_official_outputs_depend_on_the_rank(vectors: dict) -> None:
    """Official bug 2 (rank never reached the module): the rank setting must change the function."""
    outs = []
    for rank in (1, 3):
        m = official(vectors, rank=rank)
        m.load_state_dict(vectors["state_dict"])
        m.eval()
        torch.manual_seed(7)
        with torch.no_grad():
            outs.append(m([vectors[k] for k in ("c2", "c3", "c4")]))
    assert not torch.allclose(outs[0], outs[1])
