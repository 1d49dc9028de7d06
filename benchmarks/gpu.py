"""Whole-model training throughput on one GPU: images/s, peak memory, FLOPs per step and MFU.

For each model (default ``vista_r50`` and ``baseline_r50``, the three tasks, 480×640, batch 8) and each
precision variant, one process times ``--steps`` optimiser steps (forward, multi-task loss, backward,
AdamW step: the ``vista.engine`` optimiser, fused on CUDA) after ``--warmup`` steps (compilation happens
there):

- ``fp32``: float32 weights and activations;
- ``bf16``: bf16 autocast (float32 weights and loss);
- ``bf16+cl``: bf16 with channels_last weights and inputs;
- ``bf16+cl+compile``: the same with ``torch.compile`` of the model's forward.

FLOPs per step are counted once per model with ``torch.utils.flop_counter.FlopCounterMode`` over one
eager float32 forward+backward (matmuls and convolutions, 2 FLOPs per multiply-add; the optimiser is not
counted). MFU = FLOPs per step × steps/s ÷ the card's dense bf16 peak, read from the device name
(H100/H200 SXM 989 TFLOP/s, H100 PCIe 756, A100 312, L4 121; ``--peak-tflops`` for any other card).

Runs with torch (+ timm) alone: no Ray, MLflow, DVC or pydantic. ``--cpu-smoke`` runs every variant on the
CPU with a tiny model, image and step count (the test suite runs it); its numbers say nothing about speed,
and its ``+compile`` variant uses the ``aot_eager`` backend (Dynamo's graph capture and AOTAutograd's
forward and backward graphs, where graph breaks and tracing errors show, without Inductor's code
generation, which takes minutes on a small CPU).

Usage: ``python benchmarks/gpu.py [--models vista_r50 baseline_r50] [--size 480 640] [--batch 8]``
``[--steps 20] [--warmup 5] [--variants fp32 bf16 ...] [--json FILE]`` or ``python benchmarks/gpu.py --cpu-smoke``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("fp32", "bf16", "bf16+cl", "bf16+cl+compile")
# dense bf16 peak (no sparsity), TFLOP/s, by a substring of torch.cuda.get_device_name(); first match wins
PEAK_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
)
TASKS = ("depth", "seg", "normal")
NUM_CLASSES = 13
SMOKE = {"models": ["vista_r18"], "size": (64, 64), "batch": 2, "steps": 2, "warmup": 1}
SMOKE_MODEL = {"width": 16, "decoder_channels": 16, "output_stride": 32}


def peak_tflops(name: str) -> float | None:
    """The card's dense bf16 peak in TFLOP/s, from its name; ``None`` for a card not in the table."""
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS if key in name), None)


def make_batch(batch: int, size: tuple[int, int], device: torch.device) -> dict[str, torch.Tensor]:
    """Random inputs and targets of every task (the speed does not depend on their values)."""
    g = torch.Generator().manual_seed(0)
    h, w = size
    normal = torch.nn.functional.normalize(torch.randn(batch, 3, h, w, generator=g), dim=1)
    out = {
        "rgb": torch.rand(batch, 3, h, w, generator=g),
        "depth": torch.rand(batch, 1, h, w, generator=g) * 9 + 0.5,
        "seg": torch.randint(0, NUM_CLASSES, (batch, h, w), generator=g),
        "normal": normal,
    }
    return {k: v.to(device) for k, v in out.items()}


def build(name: str, device: torch.device, channels_last: bool, compile_: str | None, smoke: bool) -> torch.nn.Module:
    from vista.models import create_model

    torch.manual_seed(0)
    model = create_model(name, tasks=TASKS, num_classes=NUM_CLASSES, **(SMOKE_MODEL if smoke else {})).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_:
        model.compile(backend=compile_)
    return model.train()


def step_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor], amp: bool, channels_last: bool) -> Callable:
    from vista.engine import build_optimizer
    from vista.losses import MultiTaskLoss

    opt = build_optimizer(model, "adamw", lr=1e-4)
    loss_fn = MultiTaskLoss()
    rgb = batch["rgb"].contiguous(memory_format=torch.channels_last) if channels_last else batch["rgb"]
    device_type = rgb.device.type

    def step() -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            out = model(rgb)
        loss, _ = loss_fn({k: v.float() for k, v in out.items()}, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def count_flops(name: str, batch: dict[str, torch.Tensor], smoke: bool) -> float:
    """FLOPs of one eager float32 forward+backward (the optimiser step not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    from vista.losses import MultiTaskLoss

    model = build(name, batch["rgb"].device, False, None, smoke)
    with FlopCounterMode(display=False) as counter:
        loss, _ = MultiTaskLoss()(model(batch["rgb"]), batch)
        loss.backward()
    return float(counter.get_total_flops())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_step(step: Callable, device: torch.device, title: str, rows: int = 15) -> None:
    """Print the top ops/kernels of one (warm) step by device time (CPU time on a CPU)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\n## profile of one step: {title}\n{prof.key_averages().table(sort_by=key, row_limit=rows)}", flush=True)


def measure(
    name: str,
    variant: str,
    batch: dict[str, torch.Tensor],
    steps: int,
    warmup: int,
    smoke: bool,
    backend: str,
    profile: bool = False,
) -> dict[str, float]:
    """images/s, peak memory (GiB, CUDA only) and seconds of the warm-up steps of one variant."""
    device = batch["rgb"].device
    amp, cl, comp = variant != "fp32", "+cl" in variant, backend if "compile" in variant else None
    model = build(name, device, cl, comp, smoke)
    step = step_fn(model, batch, amp, cl)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    tic = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warm_s = time.perf_counter() - tic
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = time.perf_counter() - tic
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    if profile:
        profile_step(step, device, f"{name} {variant}")
    del model, step
    return {"images_per_s": steps * batch["rgb"].shape[0] / seconds, "step_s": seconds / steps, "peak_gib": peak,
            "warmup_s": warm_s}  # fmt: skip


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    smoke = args.cpu_smoke
    device = torch.device("cpu" if smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py: no CUDA device here (use --cpu-smoke to check the script on a CPU)")
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke)"
    peak = args.peak_tflops or (peak_tflops(card) if device.type == "cuda" else None)
    size, bs = (SMOKE["size"], SMOKE["batch"]) if smoke else (tuple(args.size), args.batch)
    steps, warmup = (SMOKE["steps"], SMOKE["warmup"]) if smoke else (args.steps, args.warmup)
    models = SMOKE["models"] if smoke else args.models
    backend = "aot_eager" if smoke else args.compile_backend
    print(f"# {card}, torch {torch.__version__}; batch {bs} at {size[0]}x{size[1]}, {steps} timed steps "
          f"after {warmup}; bf16 peak {f'{peak:.0f} TFLOP/s' if peak else 'unknown (no MFU)'}; "
          f"torch.compile backend {backend}; cudnn.benchmark {args.cudnn_benchmark}")  # fmt: skip
    batch = make_batch(bs, size, device)
    rows: list[dict[str, object]] = []
    print("| model | variant | images/s | ms/step | peak GiB | GFLOP/step | TFLOP/s | MFU | warm-up s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in models:
        flops = count_flops(name, batch, smoke)
        for variant in args.variants:
            r = measure(name, variant, batch, steps, warmup, smoke, backend, args.profile)
            achieved = flops / r["step_s"] / 1e12
            mfu = achieved / peak if peak else float("nan")
            row = {"model": name, "variant": variant, "card": card, "torch": torch.__version__, "batch": bs,
                   "size": list(size), "gflop_per_step": flops / 1e9, "tflops": achieved, "mfu": mfu, **r}  # fmt: skip
            rows.append(row)
            cells = [name, variant, f"{r['images_per_s']:.1f}", f"{1e3 * r['step_s']:.1f}", f"{r['peak_gib']:.2f}",
                     f"{flops / 1e9:.1f}", f"{achieved:.2f}", f"{100 * mfu:.1f}%", f"{r['warmup_s']:.1f}"]  # fmt: skip
            print("| " + " | ".join(cells) + " |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["vista_r50", "baseline_r50"])
    ap.add_argument("--size", nargs=2, type=int, default=[480, 640], metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, when not in the table")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the +compile variant")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny model and shapes on the CPU (checks the script)")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its conv algorithms per shape")
    ap.add_argument("--profile", action="store_true", help="print the top kernels of one step per variant")
    args = ap.parse_args(argv)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    return run(args)


if __name__ == "__main__":
    main()
