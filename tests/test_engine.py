"""Training engine: optimiser groups, schedule, epochs, evaluation, checkpoints, overfitting one batch."""

from __future__ import annotations

import pytest
import torch

from vista.checkpoint import load_checkpoint, save_checkpoint
from vista.data.sources.synthetic import SyntheticConfig
from vista.data.torch_dataset import SyntheticDataset
from vista.engine import build_optimizer, evaluate, poly_schedule, train_one_epoch
from vista.losses import MultiTaskLoss
from vista.metrics import TaskMetrics
from vista.models import create_model

TINY = {"width": 16, "decoder_channels": 16, "output_stride": 32, "num_classes": 6}


def synthetic_batch(n: int = 2, size: int = 64) -> dict[str, torch.Tensor]:
    ds = SyntheticDataset(SyntheticConfig(height=size, width=size, seed=3), n)
    items = [ds[i] for i in range(n)]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def test_every_parameter_in_exactly_one_group_with_lr_mult() -> None:
    """Official bug 1: the attention module's parameters never reached the optimiser."""
    m = create_model("vista_r18", tasks=("depth", "seg", "normal"), aux_head=True, **TINY)
    opt = build_optimizer(m, "sgd", lr=0.1, lr_mult=10)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"backbone": 0.1, "head": pytest.approx(1.0)}
    head = next(g for g in opt.param_groups if g["name"] == "head")
    assert {id(p) for p in m.neck.parameters()} <= {id(p) for p in head["params"]}


def test_attention_weights_change_after_a_training_step() -> None:
    m = create_model("vista_r18", tasks=("depth",), **TINY)
    before = {n: p.detach().clone() for n, p in m.neck.named_parameters()}
    opt = build_optimizer(m, "adamw", lr=1e-3)
    train_one_epoch(m, [synthetic_batch()], opt, MultiTaskLoss())
    changed = [n for n, p in m.neck.named_parameters() if not torch.equal(p, before[n])]
    assert changed == list(before)


def test_poly_schedule_values() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = poly_schedule(opt, total_steps=10, power=1.0, min_lr_ratio=0.1)
    lrs = []
    for _ in range(11):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[5] == pytest.approx(0.1 + 0.9 * 0.5)
    assert lrs[10] == pytest.approx(0.1)


@pytest.mark.parametrize(("task", "steps"), [("depth", 300), ("seg", 300), ("normal", 300)])
def test_tiny_model_overfits_one_batch(task: str, steps: int) -> None:
    torch.manual_seed(0)
    m = create_model("vista_r18", tasks=(task,), **TINY)
    batch = synthetic_batch()
    opt = build_optimizer(m, "adam", lr=1e-3, lr_mult=1.0, weight_decay=0.0, eps=1e-8)
    loss_fn = MultiTaskLoss()
    m.train()
    losses = []
    for _ in range(steps):
        out = m(batch["rgb"])
        loss, _ = loss_fn(out, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if losses[-1] <= 0.1 * losses[0]:
            break  # reached: stop early to keep the suite fast (the budget is the step limit)
    assert losses[-1] <= 0.1 * losses[0], (losses[0], losses[-1])


def test_train_and_evaluate_return_named_values_and_bf16_runs() -> None:
    m = create_model("vista_r18", tasks=("depth", "seg", "normal"), aux_head=True, **TINY)
    batch = synthetic_batch()
    opt = build_optimizer(m)
    seen = []
    losses = train_one_epoch(
        m, [batch, batch], opt, MultiTaskLoss(), amp=True, channels_last=True, on_step=lambda s, v: seen.append(s)
    )
    assert seen == [0, 1]
    assert set(losses) == {"loss", "depth", "seg", "seg_aux", "normal"}
    metrics = evaluate(m, [batch], TaskMetrics(("depth", "seg", "normal"), 6), amp=True)
    assert "val/seg/miou" in metrics and "val/depth/d1" in metrics and "val/normal/median" in metrics
    assert not m.training


def test_nan_loss_stops_with_the_step_named() -> None:
    m = create_model("vista_r18", tasks=("depth",), **TINY)
    batch = synthetic_batch()
    batch["depth"] = batch["depth"] * float("nan")
    batch["depth"][..., 0, 0] = 1.0

    def nan_loss(pred, b):
        return pred["depth"].mean() * float("nan"), {}

    with pytest.raises(FloatingPointError, match="at step 0"):
        train_one_epoch(m, [batch], build_optimizer(m), nan_loss)


def test_checkpoint_round_trip_weights_only(tmp_path) -> None:
    m = create_model("vista_r18", tasks=("depth",), **TINY)
    opt = build_optimizer(m)
    sched = poly_schedule(opt, 10)
    train_one_epoch(m, [synthetic_batch()], opt, MultiTaskLoss(), scheduler=sched)
    path = save_checkpoint(tmp_path / "ck" / "last.pt", m, opt, sched, epoch=3, params={"a": 1}, metrics={"val/x": 0.5})
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left
    m2 = create_model("vista_r18", tasks=("depth",), **TINY)
    opt2 = build_optimizer(m2)
    sched2 = poly_schedule(opt2, 10)
    state = load_checkpoint(path, m2, opt2, sched2)
    assert state["epoch"] == 3 and state["params"] == {"a": 1}
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert sched2.last_epoch == sched.last_epoch
    assert opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
