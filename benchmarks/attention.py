"""Forward+backward time and peak memory of the structured attention module with three implementations
of the message/evidence computation, same weights, same random draws:

- ``fused``: the Triton kernels (``message_evidence(backend="triton")``; the model's path on CUDA);
- ``shifted``: k² shifted products (``backend="torch"``; the model's path on CPU);
- ``unfold``: the official code's algorithm (``vista.models.reference``), the baseline of the ratios.

Default setting: ``official`` preset, batch 2, a 256×256 image, i.e. features c2 512×32×32,
c3 1024×16×16, c4 2048×8×8, width 512. ``--target`` runs the acceptance grid of issue 10 on CUDA:
batch 2 at 256² and batch 8 at 480², float32 and bf16 (autocast), and checks fused vs unfold against
≥ 3× the speed and ≤ 0.3× the peak memory.

``--compile`` adds each non-unfold variant under ``torch.compile`` (``fused+compile``, ...): the op is
opaque to inductor, which fuses the module's many small ops around it (mean-field, gating, slicing),
the launch-bound part at batch 2. ``--compile-mode reduce-overhead`` replays them as CUDA graphs (one
launch per graph); with the official preset it needs ``--draws-on device``: a graph cannot replay draws
made on the CPU and copied over.

Times are medians of ``--iters`` forward+backward steps, the variants interleaved in one process (the
first round warms up, compiling the Triton kernels). Memory, with parameter gradients already
allocated (a training step in steady state):
- CUDA: ``torch.cuda.max_memory_allocated`` above the allocation before the step (in this process:
  it counts allocated bytes, so the caching allocator's reserve does not leak between variants);
- CPU: peak resident memory (VmHWM, reset through /proc/self/clear_refs) above the resident memory
  before the step, each variant in a fresh subprocess so that its peak is its own. It includes
  oneDNN's transient buffers of the two 2048→2048 fusion convs of the official preset (~380 MiB at
  this size, the same in every variant), which bounds the total-peak ratio;
- both: the activations saved for backward (unique storages, parameters and inputs excluded).

Usage: ``python benchmarks/attention.py [--device cpu|cuda] [--batch 2] [--image 256] [--dtype float32 bf16]
[--variants fused shifted unfold] [--compile] [--compile-mode MODE] [--draws-on cpu|device] [--iters 5] [--target]
[--tf32] [--cudnn-benchmark] [--profile] [--count-ops]``
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}
TARGET = {"speedup": 3.0, "memory": 0.3}  # issue 10: fused vs unfold, fwd+bwd


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _precision(args: argparse.Namespace) -> None:
    # cuDNN runs float32 convs in TF32 by default on Ampere and later; the accuracy target is float32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)


def _evidence_fn(variant: str):  # noqa: ANN202
    from vista.models.filtering import message_evidence
    from vista.models.reference import unfold_message_evidence

    if variant == "unfold":
        return unfold_message_evidence
    backend = {"fused": "triton", "shifted": "torch"}[variant.removesuffix("+compile")]
    return functools.partial(message_evidence, backend=backend)


def _module(m: torch.nn.Module, variant: str, mode: str = "default") -> torch.nn.Module:
    """The module with the variant's evidence; ``+compile``: under torch.compile (the op is opaque to it,
    everything around it is fused by inductor), ``mode`` its mode (``reduce-overhead``: CUDA graphs)."""
    m.set_evidence_fn(_evidence_fn(variant))
    if not variant.endswith("+compile"):
        return m
    import torch._inductor.config

    torch._inductor.config.fallback_random = True  # the official preset's random draws as in eager
    return torch.compile(m, mode=mode)


def _setup(args: argparse.Namespace, batch: int, image: int) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    from vista.models import create_attention

    dev = torch.device(args.device)
    torch.manual_seed(0)
    m = create_attention(args.preset, in_channels=(512, 1024, 2048), width=args.width, draws_on=args.draws_on)
    m = m.to(dev).train()
    s = image // 8
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(batch, c, s >> i, s >> i, generator=g).to(dev) for i, c in enumerate((512, 1024, 2048))]
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    return m, feats


def _step(m: torch.nn.Module, feats: list[torch.Tensor], dtype: str) -> torch.Tensor:
    torch.manual_seed(7)  # same random channel vectors in every variant
    autocast = (
        torch.autocast(feats[0].device.type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
    )
    with autocast:
        out = m(feats)
    out.float().square().mean().backward()
    return out.detach().float().clone()  # a copy: a CUDA-graph replay overwrites its outputs


def measure(args: argparse.Namespace, variant: str, batch: int, image: int, dtype: str) -> tuple[dict, torch.Tensor]:
    """Peak memory and activations saved for backward of one fwd+bwd step, and the module's output."""
    m, feats = _setup(args, batch, image)
    params = list(m.parameters())
    m = _module(m, variant, args.compile_mode)
    _step(m, feats, dtype)  # warm-up: Triton compiles (or loads from its cache), cuDNN picks algorithms
    _step(m, feats, dtype)
    cuda = feats[0].device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = _step(m, feats, dtype)
        torch.cuda.synchronize()
        peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        base = _rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS watermark
        out = _step(m, feats, dtype)
        peak_mib = (_rss_kib("VmHWM") - base) / 1024
    # activation memory: unique storages saved for backward (parameters and inputs excluded)
    skip = {p.untyped_storage().data_ptr() for p in params} | {f.untyped_storage().data_ptr() for f in feats}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            saved[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _step(m, feats, dtype)
    return {"peak_mib": peak_mib, "saved_mib": sum(saved.values()) / 2**20}, out.cpu()


def timings(args: argparse.Namespace, variants: list[str], batch: int, image: int, dtype: str) -> dict[str, float]:
    """Median fwd+bwd time of every variant, interleaved in this process so drift hits all alike."""
    base, feats = _setup(args, batch, image)
    # one module shared by the eager variants (weights equal), a copy of it per compiled variant
    mods = {
        v: _module(_setup(args, batch, image)[0], v, args.compile_mode) if v.endswith("+compile") else base
        for v in variants
    }
    cuda = feats[0].device.type == "cuda"
    times: dict[str, list[float]] = {v: [] for v in variants}
    for it in range(args.iters + 2):  # two rounds warm up (Triton and torch.compile compile)
        for v in variants:
            m = mods[v]
            if m is base:
                base.set_evidence_fn(_evidence_fn(v))
            m.zero_grad(set_to_none=False)
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            _step(m, feats, dtype)
            if cuda:
                torch.cuda.synchronize()
            if it > 1:
                times[v].append(time.perf_counter() - t)
    return {v: statistics.median(t) for v, t in times.items()}


def _worker(args: argparse.Namespace) -> None:
    """One variant's memory in a fresh process (CPU), written as JSON + the output tensor."""
    stats, out = measure(args, args.variant, args.batch, args.image, args.dtype[0])
    torch.save(out, args.out_tensor)
    print(json.dumps(stats))


def _measure_in_subprocess(args: argparse.Namespace, variant: str, batch: int, image: int, dtype: str, tmp: str):
    out_path = Path(tmp) / f"{variant}.pt"
    opts = ["--device", args.device, "--preset", args.preset, "--width", str(args.width), "--dtype", dtype]
    cmd = [sys.executable, __file__, "--variant", variant, "--out-tensor", str(out_path), *opts]
    cmd += ["--batch", str(batch), "--image", str(image), *(["--tf32"] if args.tf32 else [])]
    cmd += ["--cudnn-benchmark"] if args.cudnn_benchmark else []
    cmd += ["--compile-mode", args.compile_mode, "--draws-on", args.draws_on]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{variant} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), torch.load(out_path, weights_only=True)


def run(args: argparse.Namespace, variants: list[str], batch: int, image: int, dtype: str) -> dict[str, dict]:
    """Time, peak memory, saved activations and output difference of each variant; prints a table."""
    results, outs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for v in variants:
            if args.device == "cpu":
                results[v], outs[v] = _measure_in_subprocess(args, v, batch, image, dtype, tmp)
            else:
                results[v], outs[v] = measure(args, v, batch, image, dtype)
                torch.cuda.empty_cache()
    for v, t in timings(args, variants, batch, image, dtype).items():
        results[v]["median_s"] = t
    ref = outs.get("unfold")
    s = image // 8
    print(
        f"\nattention benchmark: preset={args.preset} batch={batch} image={image}x{image} (grid {s}x{s}) "
        f"width={args.width} dtype={dtype}{' (autocast)' if dtype == 'bf16' else ''} device={args.device} "
        f"torch={torch.__version__} threads={torch.get_num_threads()} tf32={bool(args.tf32)} "
        f"cudnn.benchmark={bool(args.cudnn_benchmark)} draws_on={args.draws_on}"
        + (f" compile_mode={args.compile_mode}" if any(v.endswith("+compile") for v in variants) else "")
    )
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}")
    head = f"{'variant':<16}{'fwd+bwd median (s)':>20}{'peak (MiB)':>12}{'saved (MiB)':>13}"
    print(head + (f"{'speed-up':>10}{'peak ratio':>12}{'max rel diff':>14}" if ref is not None else ""))
    for v, r in results.items():
        line = f"{v:<16}{r['median_s']:>20.4f}{r['peak_mib']:>12.1f}{r['saved_mib']:>13.1f}"
        if ref is not None:
            u = results["unfold"]
            r["speedup"] = u["median_s"] / r["median_s"]
            r["memory"] = r["peak_mib"] / u["peak_mib"]
            r["rel_diff"] = ((outs[v] - ref).abs().max() / ref.abs().max()).item()
            line += f"{r['speedup']:>9.2f}x{r['memory']:>11.2f}x{r['rel_diff']:>14.2e}"
        print(line)
    if ref is not None:
        print("(speed-up and peak ratio vs unfold; max rel diff: max |out - out_unfold| / max |out_unfold|)")
    if "reduce-overhead" in args.compile_mode and any(v.endswith("+compile") for v in variants):
        from torch._dynamo.utils import counters

        skips = counters["inductor"]["cudagraph_skips"]  # inductor falls back to plain launches, silently
        print(f"graphs inductor did not capture as CUDA graphs so far: {skips} (why: TORCH_LOGS=cudagraphs)")
    return results


def profile(args: argparse.Namespace) -> None:
    """Where the model's default fwd+bwd spends its time: top ops by device (or CPU) time, kernel launches."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    m, feats = _setup(args, args.batch, args.image)
    for _ in range(2):
        _step(m, feats, args.dtype[0])
    cuda = feats[0].device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=acts) as prof:
        _step(m, feats, args.dtype[0])
        if cuda:
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="device_time_total" if cuda else "cpu_time_total", row_limit=20))
    if cuda:
        launches = sum(e.count for e in prof.key_averages() if e.key in ("cudaLaunchKernel", "cuLaunchKernel"))
        print(f"kernel launches per fwd+bwd: {launches}")


def count_ops(args: argparse.Namespace) -> None:
    """The tensor ops one fwd+bwd dispatches (views excluded), counted with a TorchDispatchMode: on CUDA each is
    a kernel launch, except the official preset's random draws on the CPU. The message/evidence op counts
    as one (its backward as one), whatever implements it."""
    import collections

    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.count: collections.Counter[str] = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            if not func.is_view and func is not torch.ops.aten.promote_types.default:  # (a dtype, no tensor)
                self.count[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    m, feats = _setup(args, args.batch, args.image)
    for dtype in args.dtype:
        _step(m, feats, dtype)  # warm-up
        with Ops() as ops:
            _step(m, feats, dtype)
        top = ", ".join(f"{k.removeprefix('aten.')} {n}" for k, n in ops.count.most_common(12))
        print(f"{args.preset} {dtype}: {sum(ops.count.values())} ops per fwd+bwd ({top}, ...)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="official")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--image", type=int, default=256)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["float32"], help="bf16: autocast")
    ap.add_argument("--variants", nargs="+", choices=("fused", "shifted", "unfold"), help="default: all three on CUDA")
    ap.add_argument("--compile", action="store_true", help="also time the eager variants under torch.compile")
    ap.add_argument(
        "--compile-mode", default="default", help="torch.compile mode of --compile (reduce-overhead: CUDA graphs)"
    )
    ap.add_argument(
        "--draws-on",
        default="cpu",
        choices=("cpu", "device"),
        help="generator of the random channel vectors (device: no host copy, what CUDA graphs need)",
    )
    ap.add_argument("--target", action="store_true", help="CUDA: batch 2 @ 256² and 8 @ 480², float32 and bf16")
    ap.add_argument("--tf32", action="store_true", help="let CUDA convs/matmuls use TF32 (default: float32)")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its conv algorithms per shape")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--out-tensor", help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's top ops of the model's fwd+bwd")
    ap.add_argument("--count-ops", action="store_true", help="count the ops (CUDA: launches) of one fwd+bwd")
    args = ap.parse_args()
    _precision(args)
    if args.variant:
        _worker(args)
        return
    if args.profile:
        profile(args)
        return
    if args.count_ops:
        count_ops(args)
        return
    # the Triton kernels on CPU would run in Triton's interpreter: a test tool, not a benchmark
    variants = args.variants or (["fused", "shifted", "unfold"] if args.device == "cuda" else ["shifted", "unfold"])
    if args.compile:
        variants += [f"{v}+compile" for v in variants if v != "unfold"]
    shapes = [(args.batch, args.image)]
    dtypes = args.dtype
    if args.target:
        shapes, dtypes = [(2, 256), (8, 480)], ["float32", "bf16"]
    summary = []
    for batch, image in shapes:
        for dtype in dtypes:
            res = run(args, variants, batch, image, dtype)
            summary.append((batch, image, dtype, res))
    if "unfold" not in variants:
        return
    print(f"\nsummary vs unfold (target for fused: >= {TARGET['speedup']}x speed, <= {TARGET['memory']}x peak)")
    for batch, image, dtype, res in summary:
        for v in variants:
            if v == "unfold":
                continue
            r = res[v]
            ok = r["speedup"] >= TARGET["speedup"] and r["memory"] <= TARGET["memory"]
            verdict = ("meets" if ok else "misses") + " the target" if v == "fused" else ""
            print(
                f"  batch {batch} {image}² {dtype:<8} {v:<16} speed {r['speedup']:.2f}x  peak {r['memory']:.2f}x  "
                f"rel diff {r['rel_diff']:.1e}  {verdict}"
            )


if __name__ == "__main__":
    main()
