"""Training engine: optimiser groups, schedule, epochs, evaluation, checkpoints, overfitting one batch."""

from __future__ import annotations

import pytest
import torch

from vista.checkpoint import load_checkpoint, save_checkpoint
from vista.data.sources.synthetic import SyntheticConfig
from vista.data.torch_dataset import SyntheticDataset
from vista.engine import build_optimizer, evaluate, poly_schedule, resolve_device, train_one_epoch
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


def test_attention_weights_learn_from_the_loss() -> None:
    """Every attention parameter gets a gradient from the loss and moves: without weight decay, which would
    move every weight with no gradient at all (official bug 1 left the module out of the optimiser)."""
    m = create_model("vista_r18", tasks=("depth",), **TINY)
    before = {n: p.detach().clone() for n, p in m.neck.named_parameters()}
    opt = build_optimizer(m, "adamw", lr=1e-3, weight_decay=0.0)
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
    assert set(losses) == {"loss", "depth", "seg", "seg_aux", "normal", "steps"} and losses["steps"] == 2
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


class FakeClock:
    """``time.perf_counter`` stand-in: every read advances by ``step`` seconds after ``start``."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        return self.now

    def advance(self) -> None:
        self.now += self.step


def test_time_budget_stops_training_and_drives_the_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    import vista.engine as engine

    clock = FakeClock(3.0)
    monkeypatch.setattr(engine.time, "perf_counter", clock)
    budget = engine.TimeBudget(10.0)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = poly_schedule(opt, total_steps=1000, power=1.0, min_lr_ratio=0.0, budget=budget)
    lrs = []

    def loss_fn(pred, batch):
        return (p * 0).sum() + pred["x"].sum() * 0, {}

    class Model(torch.nn.Module):
        def forward(self, x):
            clock.advance()  # each step takes 3 "seconds"
            return {"x": x.sum() * p}

    def on_step(step: int, loss: float) -> None:
        lrs.append(opt.param_groups[0]["lr"])

    batches = [{"rgb": torch.ones(1, 3, 2, 2)}] * 100
    out = train_one_epoch(Model(), batches, opt, loss_fn, scheduler=sched, on_step=on_step, budget=budget)
    # 3, 6, 9, 12 s: the fourth step spends the budget and the pass ends there
    assert out["steps"] == 4 and budget.exhausted()
    # the learning rate follows the clock, not the step count (linear decay over the 10 s)
    assert lrs == pytest.approx([0.7, 0.4, 0.1, 0.0])


def test_time_budget_resumes_with_the_time_already_spent(monkeypatch: pytest.MonkeyPatch) -> None:
    import vista.engine as engine

    clock = FakeClock(0.0)
    monkeypatch.setattr(engine.time, "perf_counter", clock)
    budget = engine.TimeBudget(10.0, spent=6.0)
    assert budget.fraction() == pytest.approx(0.6)
    clock.now = 5.0
    assert budget.tick() == pytest.approx(11.0) and budget.exhausted()
    with pytest.raises(ValueError, match="time budget"):
        engine.TimeBudget(0)


def test_warmup_ramps_then_decays() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = poly_schedule(opt, total_steps=10, power=1.0, min_lr_ratio=0.0, warmup=0.2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # steps 0 and 1 ramp (1/2, 2/2 of the warm-up) under the decay; then plain linear decay
    assert lrs[:4] == pytest.approx([0.5 * 1.0, 1.0 * 0.9, 0.8, 0.7])


def test_median_frequency_weights_by_hand() -> None:
    from vista.losses import median_frequency_weights

    # class 0: 80 px in images of 200 px -> f = 0.4; class 1: 20 of 100 -> 0.2; class 2: 10 of 100 -> 0.1
    w = median_frequency_weights([80, 20, 10, 0], [200, 100, 100, 0])
    assert w == pytest.approx([0.2 / 0.4, 1.0, 2.0, 1.0])  # median 0.2; absent class 3 -> 1
    with pytest.raises(ValueError, match="no labelled pixel"):
        median_frequency_weights([0, 0], [0, 0])


def test_class_weights_weigh_the_segmentation_loss() -> None:
    import torch.nn.functional as F

    logits = torch.randn(2, 3, 4, 4)
    seg = torch.randint(0, 3, (2, 4, 4))
    seg[0, 0, 0] = 255
    w = [0.5, 1.0, 2.0]
    loss, parts = MultiTaskLoss(ignore_index=255, class_weights=w)({"seg": logits}, {"seg": seg})
    expected = F.cross_entropy(logits, seg, weight=torch.tensor(w), ignore_index=255)
    assert parts["seg"].item() == pytest.approx(expected.item())
    plain = MultiTaskLoss(ignore_index=255)({"seg": logits}, {"seg": seg})[1]["seg"]
    assert plain.item() != pytest.approx(expected.item())


def test_device_auto_is_cuda_when_there_is_one_and_a_missing_device_is_named() -> None:
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    n = torch.cuda.device_count()
    with pytest.raises(ValueError, match=rf"device 'cuda:{n}': this machine has {n} CUDA device"):
        resolve_device(f"cuda:{n}")


def test_adam_is_fused_on_cuda_only() -> None:
    m = create_model("vista_r18", tasks=("seg",), **TINY)
    assert not build_optimizer(m, "adamw").defaults["fused"]  # CPU: the default (foreach) update
    if torch.cuda.is_available():
        assert build_optimizer(m.cuda(), "adamw").defaults["fused"]


def test_compile_in_place_keeps_parameter_names() -> None:
    """``train.compile`` compiles the forward in place (``nn.Module.compile``): the state dict, and so every
    checkpoint, keeps its names (``torch.compile(model)`` would prefix them ``_orig_mod.``)."""
    m = create_model("vista_r18", tasks=("seg",), **TINY)
    names = list(m.state_dict())
    m.compile()  # compiles lazily, at the first call
    assert list(m.state_dict()) == names
    fresh = create_model("vista_r18", tasks=("seg",), **TINY)
    fresh.load_state_dict(m.state_dict())
