"""Where one training step goes, per component: ``vista_r18`` against ``baseline_r18`` (or any models).

One training step of each model with a recipe's settings (default: the CamVid profile — bf16 autocast,
channels_last, 240×320 crops, batch 8, one CPU thread per rank as the recipe's two Ray workers have),
split into components, each with its forward and backward time, share of the step and FLOPs:

- forward regions: ``backbone``, ``projection`` (the neck's convs onto its grid), ``kernels`` (the
  per-pixel kernel predictions), ``evidence`` (the pixel-adaptive filters and Φ), ``mean-field`` (the
  v↔m updates), ``message`` (``A ⊙ S``), ``fusion`` (the 1×1 fusion of dilations and the receiver
  update: what else the neck does), ``decoder``, ``heads`` (task and auxiliary heads), ``loss``;
- the backward of each: every autograd node is labelled with the region that created it, and timed
  by node hooks;
- ``optimizer`` (the step), and ``all-reduce``: one all-reduce of the model's gradients in a two-process
  gloo group, one thread per rank as in training, in DDP's 25-MiB buckets with the recipe's compression
  (``train.grad_compression``), timed alone (DDP overlaps it with the backward, where on this CPU it
  competes for the same two cores).

FLOPs come from ``torch.utils.flop_counter`` (convolutions, matmuls, einsums) plus an analytic count for
the evidence op (``vista::message_evidence``: 2·k² FLOPs per output element for each of its three
filters, two when the sender is the receiver); element-wise work counts zero, so a component with time
and few FLOPs is bandwidth- or overhead-bound. ``GFLOP/s`` beside each row against the ``matmul rate``
line (a large matmul on the same threads, in the step's dtype) shows which parts run far below the
machine's rate.

Times are medians over ``--steps`` profiled steps after ``--warmup`` steps; the hooks cost a little, so
the plain step time (no hooks) is printed beside the sum. Throughput ratios: plain steps (no hooks), the
models alternating in ``--rounds`` rounds in this process, and the same with each model's all-reduce.

Usage: ``python benchmarks/step_profile.py [--profile camvid] [--models vista_r18 baseline_r18]
[--steps 5] [--threads 1] [--set key=value ...] [--no-allreduce] [--markdown]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FORWARD = ("backbone", "projection", "kernels", "evidence", "mean-field", "message", "fusion", "decoder", "heads")
ROWS = (*FORWARD, "loss")


class Labeller:
    """Times labelled forward regions (exclusive of nested ones) and the backward of the autograd nodes
    each region created; counts FLOPs per label when a FLOP mode is on."""

    def __init__(self) -> None:
        self.stack: list[str] = ["other"]
        self.fwd: dict[str, float] = defaultdict(float)
        self.bwd: dict[str, float] = defaultdict(float)
        self.node_label: dict[int, str] = {}
        self.nodes: list[Any] = []  # keeps nodes alive while labelled (ids stay unique)
        self._t = time.perf_counter()
        self.active = False
        self._bwd_label = "other"
        self._bwd_t = 0.0

    # forward ---------------------------------------------------------------------------------------
    def _switch(self) -> None:
        now = time.perf_counter()
        if self.active:
            self.fwd[self.stack[-1]] += now - self._t
        self._t = now

    def _label_graph(self, tensors: list[Any], label: str) -> None:
        todo = [t.grad_fn for t in tensors if isinstance(t, Tensor) and t.grad_fn is not None]
        while todo:
            node = todo.pop()
            if node is None or id(node) in self.node_label:
                continue
            self.node_label[id(node)] = label
            self.nodes.append(node)
            todo.extend(n for n, _ in node.next_functions)

    def enter(self, label: str, inputs: Any) -> None:
        if self.active:  # nodes made before this region belong to the region around it
            self._label_graph(tree_flatten(inputs)[0], self.stack[-1])
        self._switch()
        self.stack.append(label)

    def exit(self, outputs: Any) -> None:
        self._switch()
        label = self.stack.pop()
        if self.active:
            self._label_graph(tree_flatten(outputs)[0], label)

    @contextlib.contextmanager
    def region(self, label: str, inputs: Any = ()) -> Iterator[list[Any]]:
        out: list[Any] = []
        self.enter(label, inputs)
        try:
            yield out
        finally:
            self.exit(out)

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.enter(label, (args, kwargs))
            out = fn(*args, **kwargs)
            self.exit(out)
            return out

        return wrapped

    def hook_module(self, module: nn.Module, label: str) -> None:
        module.register_forward_pre_hook(lambda m, args: self.enter(label, args))
        module.register_forward_hook(lambda m, args, out: self.exit(out))

    # backward --------------------------------------------------------------------------------------
    def hook_backward(self, loss: Tensor) -> None:
        """Label what is left (the loss's own nodes) and time every node of the graph."""
        self._label_graph([loss], "loss")
        for node in self.nodes:
            label = self.node_label[id(node)]
            node.register_prehook(self._pre(label))
            node.register_hook(self._post)

    def _pre(self, label: str) -> Callable[..., None]:
        def pre(grad_outputs: Any) -> None:
            self._bwd_label = label
            self._bwd_t = time.perf_counter()

        return pre

    def _post(self, grad_inputs: Any, grad_outputs: Any) -> None:
        self.bwd[self._bwd_label] += time.perf_counter() - self._bwd_t
        self._bwd_label = "other"

    def reset(self) -> None:
        self.fwd.clear()
        self.bwd.clear()
        self.node_label.clear()
        self.nodes.clear()
        self.stack = ["other"]


def instrument(model: nn.Module, lab: Labeller) -> Callable[[], None]:
    """Label the components of a VISTA-Net/baseline model (forward hooks; the attention's functions are
    wrapped where the module calls them). Returns what puts those functions back."""
    from vista.models import attention as attn_mod

    originals = {k: getattr(attn_mod, k) for k in ("predict_kernels", "mean_field", "gated_message")}

    lab.hook_module(model.backbone, "backbone")
    lab.hook_module(model.decoder, "decoder")
    lab.hook_module(model.heads, "heads")
    if getattr(model, "aux", None) is not None:
        lab.hook_module(model.aux, "heads")
    neck = model.neck
    lab.hook_module(neck, "fusion")  # what the neck does outside the regions below
    if isinstance(neck, attn_mod.StructuredAttention):
        for name, mod in neck.named_children():
            if name.startswith("conv"):
                lab.hook_module(mod, "projection")
        for name, _, _ in neck.pairs:
            pair = getattr(neck, name)
            pair.evidence = lab.wrap("evidence", pair.evidence)
        attn_mod.predict_kernels = lab.wrap("kernels", attn_mod.predict_kernels)
        attn_mod.mean_field = lab.wrap("mean-field", attn_mod.mean_field)
        attn_mod.gated_message = lab.wrap("message", attn_mod.gated_message)
    else:
        lab.hook_module(neck.proj, "projection")

    def restore() -> None:
        for k, fn in originals.items():
            setattr(attn_mod, k, fn)

    return restore


def evidence_flop_formulas() -> None:
    """FLOPs of ``vista::message_evidence`` (three k²-tap filters, 2 per tap, + f_r ⊙ S; two filters when
    ``f_r`` is ``None``: the sender is the receiver and ``D(f, K^e) + D(f, K^r)`` is one filter) and its
    backward (per tap: the kernel gradients' products and the input gradients' multiply-adds: 2× the
    forward)."""
    from torch.utils.flop_counter import register_flop_formula

    import vista.models.filtering  # noqa: F401  (registers the op)

    def fwd(f_e_shape, f_r_shape, w_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
        b, c, h, w = f_e_shape
        filters = 2 if f_r_shape is None else 3
        return b * c * h * w * (filters * 2 * w_shape[1] + 2)

    def bwd(g_s_shape, g_phi_shape, f_e_shape, f_r_shape, w_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
        b, c, h, w = g_s_shape
        filters = 2 if f_r_shape is None else 3
        return b * c * h * w * (2 * filters * 2 * w_shape[1] + 4)

    with contextlib.suppress(Exception):  # registered once per process
        register_flop_formula(torch.ops.vista.message_evidence, get_raw=False)(fwd)
        register_flop_formula(torch.ops.vista.message_evidence_backward, get_raw=False)(bwd)


class FlopsByLabel(torch.utils._python_dispatch.TorchDispatchMode):
    """FLOPs of each aten op (``torch.utils.flop_counter``'s formulas), summed by the Labeller's current
    label (forward: the innermost region; backward: the node being run)."""

    def __init__(self, lab: Labeller) -> None:
        super().__init__()
        from torch.utils.flop_counter import flop_registry

        self.registry = flop_registry
        self.lab = lab
        self.fwd: dict[str, int] = defaultdict(int)
        self.bwd: dict[str, int] = defaultdict(int)
        self.backward = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        from torch.utils.flop_counter import normalize_tuple  # noqa: F401

        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in self.registry:
            flops = self.registry[packet](*args, **kwargs, out_val=out)
            if self.backward:
                self.bwd[self.lab._bwd_label] += flops
            else:
                self.fwd[self.lab.stack[-1]] += flops
        return out


def make_batch(params: Any, crop: tuple[int, int]) -> dict[str, Tensor]:
    """A random batch of the recipe's shape (labels include the ignore index)."""
    t, m = params.train, params.model
    b, (h, w) = t.batch_size, crop
    g = torch.Generator().manual_seed(0)
    batch = {"rgb": torch.randn(b, 3, h, w, generator=g)}
    if t.channels_last:
        batch["rgb"] = batch["rgb"].contiguous(memory_format=torch.channels_last)
    if "seg" in m.tasks:
        batch["seg"] = torch.randint(0, m.num_classes + 1, (b, h, w), generator=g)
        batch["seg"][batch["seg"] == m.num_classes] = params.data.ignore_index
    if "depth" in m.tasks:
        batch["depth"] = torch.rand(b, 1, h, w, generator=g) * 5 + 0.5
    if "normal" in m.tasks:
        batch["normal"] = torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
    return batch


def build(params: Any, name: str) -> tuple[nn.Module, Any, Any]:
    from vista.engine import build_optimizer
    from vista.losses import MultiTaskLoss
    from vista.recipe import build_model

    t = params.train
    p = params.model_copy(update={"model": params.model.model_copy(update={"name": name})})
    torch.manual_seed(t.seed)
    model = build_model(p)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = build_optimizer(model, t.optimizer, t.lr, t.lr_mult, t.weight_decay, t.momentum, t.eps)
    loss_fn = MultiTaskLoss(dict(t.loss_weights), params.data.ignore_index, t.aux_weight, t.normal_loss)
    return model, opt, loss_fn


def _autocast(amp: bool) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast("cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext()


def plain_step(model: nn.Module, opt: Any, loss_fn: Any, batch: dict[str, Tensor], amp: bool) -> float:
    tic = time.perf_counter()
    with _autocast(amp):
        pred = model(batch["rgb"])
    loss, _ = loss_fn(pred, batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - tic


def profiled_step(
    model: nn.Module, opt: Any, loss_fn: Any, batch: dict[str, Tensor], amp: bool, lab: Labeller
) -> dict[str, float]:
    """Seconds of each forward region, each region's backward (``bwd:``), the optimiser, the total."""
    lab.reset()
    lab.active = True
    tic = time.perf_counter()
    lab._t = tic
    with _autocast(amp):
        pred = model(batch["rgb"])
    with lab.region("loss", pred) as out:
        loss, _ = loss_fn(pred, batch)
        out.append(loss)
    lab._switch()
    lab.active = False
    lab.hook_backward(loss)
    opt.zero_grad(set_to_none=True)
    t_b = time.perf_counter()
    loss.backward()
    t_o = time.perf_counter()
    opt.step()
    end = time.perf_counter()
    row = {k: v for k, v in lab.fwd.items()}
    row.update({f"bwd:{k}": v for k, v in lab.bwd.items()})
    row["bwd:engine"] = (t_o - t_b) - sum(lab.bwd.values())  # the engine's own work between nodes
    row["optimizer"] = end - t_o
    row["total"] = end - tic
    return row


def count_flops(model: nn.Module, loss_fn: Any, batch: dict[str, Tensor], amp: bool, lab: Labeller) -> FlopsByLabel:
    mode = FlopsByLabel(lab)
    lab.reset()
    lab.active = True
    with mode:
        with _autocast(amp):
            pred = model(batch["rgb"])
        with lab.region("loss", pred) as out:
            loss, _ = loss_fn(pred, batch)
            out.append(loss)
        lab.active = False
        lab.hook_backward(loss)
        mode.backward = True
        loss.backward()
    model.zero_grad(set_to_none=True)
    return mode


def matmul_rate(amp: bool, n: int = 1024) -> float:
    """GFLOP/s of an n×n matmul on this process's threads, in bf16 under ``amp`` (else float32)."""
    dtype = torch.bfloat16 if amp else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(5):
        tic = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - tic)
    return 2 * n**3 / statistics.median(times) / 1e9


# gradient all-reduce: two gloo ranks ------------------------------------------------------------------


def _allreduce_worker(rank: int, params: Any, name: str, crop: tuple[int, int], steps: int, port: int, q: Any) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model, _, loss_fn = build(params, name)
    batch = make_batch(params, crop)
    with _autocast(params.train.amp):
        pred = model(batch["rgb"])
    loss_fn(pred, batch)[0].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    comp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(params.train.grad_compression, torch.float32)
    cap = 25 * 2**20 // 4  # DDP's default bucket: 25 MiB of float32 gradients
    times = []
    for _ in range(steps + 1):
        dist.barrier()
        tic = time.perf_counter()
        # as DDP's buckets with the recipe's compression hook: flatten, cast, all-reduce, average, cast back
        flat = torch.cat([g.flatten() for g in grads])
        for chunk in flat.split(cap):
            buf = chunk.to(comp)
            dist.all_reduce(buf)
            chunk.copy_(buf.div_(2))
        times.append(time.perf_counter() - tic)
    if rank == 0:
        q.put((statistics.median(times[1:]), sum(g.numel() for g in grads)))
    dist.destroy_process_group()


def allreduce_cost(params: Any, name: str, crop: tuple[int, int], steps: int) -> tuple[float, int]:
    """(seconds to all-reduce the model's gradients once, gradient count): two gloo ranks, one thread each,
    DDP's bucket size and the recipe's compression, alone (in training DDP overlaps it with the backward,
    where on this CPU it competes for the same two cores)."""
    import torch.multiprocessing as mp

    from pipelines.ports import free_port

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_allreduce_worker, args=(r, params, name, crop, steps, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    result = q.get(timeout=1800)
    for p in procs:
        p.join(timeout=60)
    return result


# report -------------------------------------------------------------------------------------------------


def report(
    name: str,
    rows: list[dict[str, float]],
    flops: FlopsByLabel,
    plain: float,
    ar: tuple[float, int] | None,
    rate: float,
    markdown: bool,
) -> None:
    med = {k: statistics.median(r.get(k, 0.0) for r in rows) for k in set().union(*rows)}
    total = med["total"] + (ar[0] if ar else 0.0)
    lines = []
    header = ("component", "fwd ms", "bwd ms", "share", "GFLOP fwd+bwd", "GFLOP/s")
    rows_out = []
    for comp in (*ROWS, "other"):
        f, b = med.get(comp, 0.0), med.get(f"bwd:{comp}", 0.0)
        if f == 0 and b == 0:
            continue
        gf = (flops.fwd.get(comp, 0) + flops.bwd.get(comp, 0)) / 1e9
        rows_out.append((comp, f * 1e3, b * 1e3, (f + b) / total, gf, gf / (f + b) if f + b > 0 else 0.0))
    extra = [("autograd engine", 0.0, med.get("bwd:engine", 0.0) * 1e3, med.get("bwd:engine", 0.0) / total, 0.0, 0.0)]
    extra.append(("optimizer step", med["optimizer"] * 1e3, 0.0, med["optimizer"] / total, 0.0, 0.0))
    if ar:
        extra.append((f"all-reduce ({ar[1] / 1e6:.1f} M grads)", 0.0, ar[0] * 1e3, ar[0] / total, 0.0, 0.0))
    rows_out += extra
    gtot = (sum(flops.fwd.values()) + sum(flops.bwd.values())) / 1e9
    print(
        f"\n{name}: profiled step {med['total'] * 1e3:.0f} ms (plain step {plain * 1e3:.0f} ms), "
        f"{gtot:.1f} GFLOP per step; matmul rate {rate:.0f} GFLOP/s"
    )
    if markdown:
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|---|" + "---:|" * (len(header) - 1))
        for c, f, b, s, gf, r in rows_out:
            lines.append(f"| {c} | {f:.1f} | {b:.1f} | {s:.1%} | {gf:.3f} | {r:.1f} |")
        lines.append(f"| **step** | | | | {gtot:.3f} | {gtot / total:.1f} |")
    else:
        lines.append(f"{header[0]:<22}{header[1]:>9}{header[2]:>9}{header[3]:>8}{header[4]:>15}{header[5]:>10}")
        for c, f, b, s, gf, r in rows_out:
            lines.append(f"{c:<22}{f:>9.1f}{b:>9.1f}{s:>8.1%}{gf:>15.3f}{r:>10.1f}")
        lines.append(f"{'step (with all-reduce)':<22}{total * 1e3:>18.0f}{'':>8}{gtot:>15.3f}{gtot / total:>10.1f}")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="camvid", help="params profile (default: camvid; 'none' for params.yaml)")
    ap.add_argument("--models", nargs="+", default=["vista_r18", "baseline_r18"])
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="params override key=value")
    ap.add_argument("--steps", type=int, default=5, help="profiled and plain steps per model")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of plain steps for the throughput ratio")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (the recipe's Ray workers have 1 each)")
    ap.add_argument(
        "--crop", type=int, nargs=2, default=None, help="H W (default: loader.crop_size or data.image_size)"
    )
    ap.add_argument("--no-allreduce", action="store_true", help="skip the two-rank gloo pass")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()

    from vista.config import load_params

    params = load_params(ROOT / "params.yaml", args.overrides, None if args.profile == "none" else args.profile)
    t = params.train
    crop = tuple(args.crop or params.loader.crop_size or params.data.image_size)
    torch.set_num_threads(args.threads)
    evidence_flop_formulas()
    rate = matmul_rate(t.amp)
    print(
        f"step profile: {', '.join(args.models)}; {params.data.dataset} recipe, batch {t.batch_size}, crop {crop}, "
        f"amp={t.amp} channels_last={t.channels_last} grad_compression={t.grad_compression}; "
        f"{args.threads} thread(s), torch {torch.__version__}"
    )
    batch = make_batch(params, crop)
    plain: dict[str, list[float]] = defaultdict(list)
    allreduce: dict[str, float] = {}
    built = {}
    for name in args.models:
        built[name] = build(params, name)
        for _ in range(args.warmup):
            plain_step(*built[name], batch, t.amp)
    for _ in range(args.rounds):  # alternating, so drift hits every model alike
        for name in args.models:
            plain[name] += [plain_step(*built[name], batch, t.amp) for _ in range(args.steps)]
    for name in args.models:
        model, opt, loss_fn = built[name]
        lab = Labeller()
        restore = instrument(model, lab)
        rows = [profiled_step(model, opt, loss_fn, batch, t.amp, lab) for _ in range(args.steps + 1)][1:]
        flops = count_flops(model, loss_fn, batch, t.amp, lab)
        restore()
        ar = None if args.no_allreduce else allreduce_cost(params, name, crop, args.steps)
        allreduce[name] = ar[0] if ar else 0.0
        report(name, rows, flops, statistics.median(plain[name]), ar, rate, args.markdown)
    ref = args.models[-1]
    print(f"\nthroughput of one rank, samples/s, and the ratio to {ref} (plain steps, models alternating):")
    for name in args.models:
        sec, ref_sec = statistics.median(plain[name]), statistics.median(plain[ref])
        line = f"  {name:<16}{t.batch_size / sec:>8.2f}   {ref_sec / sec:.3f}x"
        if not args.no_allreduce:
            both, ref_both = sec + allreduce[name], ref_sec + allreduce[ref]
            line += f"   with the all-reduce: {t.batch_size / both:.2f}  {ref_both / both:.3f}x"
        print(line)


if __name__ == "__main__":
    main()
