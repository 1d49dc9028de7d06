"""Models from the registry: shapes, heads, baselines, parameter groups, regressions of official bugs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vista.models import PretrainedWeightsError, create_model, list_models

TINY = {"width": 16, "decoder_channels": 16, "output_stride": 32}
ALL = ("depth", "seg", "normal")


def test_registry_has_the_promised_models() -> None:
    names = set(list_models())
    for tag in ("r18", "r50", "r101"):
        assert {f"vista_{tag}", f"baseline_{tag}", f"cbam_{tag}"} <= names
    assert "vista_official_r101" in names
    with pytest.raises(ValueError, match="model 'vista_r7'"):
        create_model("vista_r7")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['depth_max'\]"):
        create_model("vista_r18", depth_max=3)


@pytest.mark.parametrize("name", ["vista_r18", "baseline_r18", "cbam_r18"])
def test_forward_returns_each_task_at_input_resolution(name: str, device: torch.device) -> None:
    m = create_model(name, tasks=ALL, num_classes=12, max_depth=10.0, **TINY).to(device).eval()
    x = torch.randn(2, 3, 64, 96, device=device)
    with torch.no_grad():
        out = m(x)
    assert set(out) == set(ALL)
    assert out["depth"].shape == (2, 1, 64, 96)
    assert out["seg"].shape == (2, 12, 64, 96)
    assert out["normal"].shape == (2, 3, 64, 96)
    assert ((out["depth"] > 0) & (out["depth"] < 10.0)).all()
    torch.testing.assert_close(out["normal"].norm(dim=1), torch.ones(2, 64, 96, device=device))


def test_example_from_the_issue_full_size_r18() -> None:
    m = create_model("vista_r18", tasks=ALL, num_classes=12).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "depth": (1, 1, 64, 64),
        "seg": (1, 12, 64, 64),
        "normal": (1, 3, 64, 64),
    }


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_output_stride_and_odd_input_sizes(stride: int) -> None:
    m = create_model("vista_r18", tasks=("depth",), width=8, decoder_channels=8, output_stride=stride).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 70, 90))
    assert out["depth"].shape == (1, 1, 70, 90)


def test_aux_head_only_in_training() -> None:
    m = create_model("vista_r18", tasks=("seg",), num_classes=5, aux_head=True, **TINY)
    x = torch.randn(2, 3, 64, 64)
    assert set(m.train()(x)) == {"seg", "seg_aux"}
    with torch.no_grad():
        assert set(m.eval()(x)) == {"seg"}


def test_official_model_uses_the_official_module_and_loads_its_layout() -> None:
    m = create_model("vista_official_r101", tasks=("depth",))
    assert m.neck.cfg.fusion == "official" and m.neck.out_channels == 2048
    assert sum(p.numel() for p in m.neck.parameters()) == 95_881_971
    # the official module's own state_dict loads into our neck strictly
    ref = {k: torch.zeros_like(v) for k, v in m.neck.state_dict().items()}
    m.neck.load_state_dict(ref, strict=True)


def test_cbam_baseline_uses_timm_cbam() -> None:
    from timm.layers.cbam import CbamModule

    m = create_model("cbam_r18", **TINY)
    assert isinstance(m.neck.attn, CbamModule)
    b = create_model("baseline_r18", **TINY)
    assert sum(p.numel() for p in b.neck.parameters()) < sum(p.numel() for p in m.neck.parameters())


def test_attention_rank_reaches_the_module() -> None:
    """Official bug 2: `att_rank` never reached the module (always rank 3)."""
    m = create_model("vista_r18", attention={"rank": 5, "channel_init": "learned"}, **TINY)
    pairs = [getattr(m.neck, name) for name, _, _ in m.neck.pairs]
    assert pairs and all(p.cfg.rank == 5 for p in pairs)
    _, maps = m.neck(m.backbone(torch.randn(1, 3, 64, 64))[1:], return_maps=True)
    assert all(a.v.shape[1] == 5 for per_pair in maps.values() for a in per_pair)


def test_eval_is_reproducible_whole_model() -> None:
    """Official bug 3: random channel vectors at test time. Paper preset eval is deterministic."""
    m = create_model("vista_r18", attention={"sample_channels": True, "channel_init": "learned"}, **TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.manual_seed(3)
        a = m(x)["depth"]
        torch.manual_seed(4)
        b = m(x)["depth"]
    assert torch.equal(a, b)


def test_param_groups_partition_the_parameters() -> None:
    m = create_model("vista_r18", tasks=ALL, aux_head=True, **TINY)
    groups = m.param_groups()
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    neck_ids = {id(p) for p in m.neck.parameters()}
    assert neck_ids <= {id(p) for p in groups["head"]}


def test_pretrained_offline_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", "/nonexistent-vista-test-cache")
    with pytest.raises(PretrainedWeightsError, match=r"resnet18.*model\.pretrained=false"):
        create_model("vista_r18", pretrained=True, **TINY)


@pytest.mark.gpu
def test_bf16_autocast_forward_backward_whole_model_cuda() -> None:
    """Under bf16 autocast the whole model's outputs and gradients follow its float32 ones (bf16 keeps
    ~3 significant digits: outputs within a few per cent, the gradient pointing the same way)."""
    m = create_model("vista_r18", tasks=ALL, num_classes=4, aux_head=True, **TINY).cuda().train()
    for mod in m.modules():  # training mode (batch statistics, the aux head) without dropout's random masks
        if isinstance(mod, torch.nn.modules.dropout._DropoutNd):
            mod.eval()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    params = [p for p in m.parameters() if p.requires_grad]
    weights = {k: torch.randn_like(v) for k, v in m(x).items()}  # a loss that every output element moves

    def run(amp: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        m.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = {k: v.float() for k, v in m(x).items()}
        sum((v * weights[k]).mean() for k, v in out.items()).backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
        return {k: v.detach() for k, v in out.items()}, torch.cat([p.grad.flatten() for p in params])

    ref_out, ref_grad = run(amp=False)
    out, grad = run(amp=True)
    for k, v in out.items():
        assert (v - ref_out[k]).norm() <= 0.05 * ref_out[k].norm(), k
    assert F.cosine_similarity(grad, ref_grad, dim=0) > 0.98


# -- light models for fast training (MobileNetV3-Large) and the peer a user would pick instead -------


def test_mobilenet_family_shares_the_backbone_and_the_stride16_grid() -> None:
    x = torch.randn(2, 3, 96, 128)
    grids = {}
    for name in ("vista_mnv3", "baseline_mnv3", "cbam_mnv3"):
        m = create_model(name, tasks=("seg",), num_classes=11).eval()
        assert m.cfg.backbone == "mobilenetv3_large_100"
        with torch.no_grad():
            feats = m.backbone(x)
            grids[name] = tuple(m.neck(feats[1:]).shape[-2:])
            assert m(x)["seg"].shape == (2, 11, 96, 128)
    assert set(grids.values()) == {(6, 8)}  # stride 16: the neck works on c3's grid
    assert create_model("vista_mnv3").neck.cfg.senders == ("c3", "c4")


def test_attention_overrides_merge_with_the_registered_ones() -> None:
    m = create_model("vista_mnv3", attention={"rank": 5})
    assert m.neck.cfg.rank == 5 and m.neck.cfg.senders == ("c3", "c4")
    with pytest.raises(ValueError, match="grid='c9'"):
        create_model("vista_r18", grid="c9")


def test_lraspp_peer_is_torchvision_with_random_init() -> None:
    import torchvision

    m = create_model("lraspp_mnv3", tasks=("seg",), num_classes=11, width=99, attention={"rank": 2})
    ref = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=11)
    assert [k for k in m.state_dict()] == [k for k in ref.state_dict()]  # the same network, nothing added
    ref.load_state_dict(m.state_dict())
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(x)["seg"], ref.eval()(x)["out"])
    groups = m.param_groups()
    assert len(groups["backbone"]) + len(groups["head"]) == len(list(m.parameters()))
    # the one change: BatchNorm running statistics follow the weights at PyTorch's default momentum
    assert {b.momentum for b in ref.modules() if isinstance(b, torch.nn.BatchNorm2d)} == {0.01, 0.1}
    assert {b.momentum for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)} == {0.1}
    x2 = torch.randn(2, 3, 64, 80)
    m.train()(x2)
    ref.train()(x2)
    bn, bn_ref = (next(b for b in net.modules() if isinstance(b, torch.nn.BatchNorm2d)) for net in (m, ref))
    assert (bn.running_var - 1).abs().mean() > 5 * (bn_ref.running_var - 1).abs().mean()
    with pytest.raises(ValueError, match="segmentation model"):
        create_model("lraspp_mnv3", tasks=("depth",))


@pytest.mark.parametrize("name", ["vista_r18", "lraspp_mnv3"])
def test_input_scale_sets_the_inference_resolution(name: str) -> None:
    m = create_model(name, tasks=("seg",), num_classes=5, input_scale=0.5).eval()
    seen = []
    m.backbone.register_forward_pre_hook(lambda mod, args: seen.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        out = m(torch.randn(1, 3, 96, 128))
    assert out["seg"].shape == (1, 5, 96, 128)  # answers at the input's size
    m.train()(torch.randn(2, 3, 96, 128))  # training: the loader's crops go in as they are
    assert seen == [(48, 64), (96, 128)]
    with pytest.raises(ValueError, match="input_scale=0"):
        create_model(name, tasks=("seg",), input_scale=0)
