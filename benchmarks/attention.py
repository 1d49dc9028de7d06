"""Forward+backward time and peak memory of the structured attention module: our pixel-adaptive filter
(k² shifted products) vs. the unfold algorithm of the official code, same weights, same random draws.

Default setting (issue acceptance): ``official`` preset, batch 2, a 256×256 image, i.e. features
c2 512×32×32, c3 1024×16×16, c4 2048×8×8, width 512, float32.

Times are medians of ``--iters`` forward+backward steps, the two variants interleaved in one process.
For memory, each variant runs in a fresh subprocess so that its peak is its own:
- CPU: peak resident memory (VmHWM, reset through /proc/self/clear_refs) above the resident memory
  before the step, with parameter gradients already allocated (a training step in steady state);
- CUDA: ``torch.cuda.max_memory_allocated`` above the allocation before the step, likewise;
- both: the activations saved for backward (unique storages, parameters and inputs excluded).

On CPU the peak includes oneDNN's transient buffers of the two 2048→2048 fusion convs of the official
preset (~380 MiB at this size, the same in both variants), which bounds the total-peak ratio.

Usage: ``python benchmarks/attention.py [--device cpu|cuda] [--batch 2] [--image 256] [--iters 5]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _precision(args: argparse.Namespace) -> None:
    # cuDNN runs float32 convs in TF32 by default on Ampere and later; the accuracy target is float32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    _precision(args)
    from vista.models import create_attention
    from vista.models.reference import unfold_message_evidence

    dev = torch.device(args.device)
    torch.manual_seed(0)
    m = create_attention(args.preset, in_channels=(512, 1024, 2048), width=args.width).to(dev).train()
    if args.variant == "unfold":
        m.set_evidence_fn(unfold_message_evidence)
    s = args.image // 8
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(args.batch, c, s >> i, s >> i, generator=g).to(dev) for i, c in enumerate((512, 1024, 2048))]
    for p in m.parameters():
        p.grad = torch.zeros_like(p)

    def step() -> torch.Tensor:
        torch.manual_seed(7)  # same random channel vectors in both variants
        out = m(feats)
        out.square().mean().backward()
        return out.detach()

    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = step()
        torch.cuda.synchronize()
        peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        base = _rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS watermark
        out = step()
        peak_mib = (_rss_kib("VmHWM") - base) / 1024
    # activation memory: unique storages saved for backward (parameters and inputs excluded)
    skip = {p.untyped_storage().data_ptr() for p in m.parameters()} | {f.untyped_storage().data_ptr() for f in feats}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            saved[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch.manual_seed(7)
        m(feats).square().mean().backward()
    saved_mib = sum(saved.values()) / 2**20
    torch.save(out.cpu(), args.out_tensor)
    print(json.dumps({"peak_mib": peak_mib, "saved_mib": saved_mib}))


def timings(args: argparse.Namespace) -> dict[str, float]:
    """Median fwd+bwd time of both variants, interleaved in this process so drift hits both alike."""
    sys.path.insert(0, str(ROOT))
    _precision(args)
    from vista.models import create_attention
    from vista.models.attention import message_evidence
    from vista.models.reference import unfold_message_evidence

    dev = torch.device(args.device)
    torch.manual_seed(0)
    m = create_attention(args.preset, in_channels=(512, 1024, 2048), width=args.width).to(dev).train()
    s = args.image // 8
    feats = [torch.randn(args.batch, c, s >> i, s >> i).to(dev) for i, c in enumerate((512, 1024, 2048))]
    fns = {"ours": message_evidence, "unfold": unfold_message_evidence}
    times: dict[str, list[float]] = {v: [] for v in fns}
    for it in range(args.iters + 1):  # the first round warms up
        for v, fn in fns.items():
            m.set_evidence_fn(fn)
            m.zero_grad(set_to_none=False)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            torch.manual_seed(7)
            m(feats).square().mean().backward()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if it > 0:
                times[v].append(time.perf_counter() - t)
    return {v: statistics.median(t) for v, t in times.items()}


def profile(args: argparse.Namespace) -> None:
    """Where our fwd+bwd spends its time: top ops by device (or CPU) time, and the kernel-launch count."""
    sys.path.insert(0, str(ROOT))
    _precision(args)
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from vista.models import create_attention

    dev = torch.device(args.device)
    m = create_attention(args.preset, in_channels=(512, 1024, 2048), width=args.width).to(dev).train()
    s = args.image // 8
    feats = [torch.randn(args.batch, c, s >> i, s >> i).to(dev) for i, c in enumerate((512, 1024, 2048))]
    for _ in range(2):
        m(feats).square().mean().backward()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch_profile(activities=acts) as prof:
        m(feats).square().mean().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
    key = "device_time_total" if dev.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=20))
    if dev.type == "cuda":
        launches = sum(e.count for e in prof.key_averages() if e.key in ("cudaLaunchKernel", "cuLaunchKernel"))
        print(f"kernel launches per fwd+bwd: {launches}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="official")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--image", type=int, default=256)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--tf32", action="store_true", help="let CUDA convs/matmuls use TF32 (default: float32)")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--out-tensor", help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's top ops of our fwd+bwd and exit")
    args = ap.parse_args()
    if args.profile:
        profile(args)
        return
    if args.variant:
        worker(args)
        return

    results, outs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("ours", "unfold"):
            out_path = Path(tmp) / f"{variant}.pt"
            cmd = [
                sys.executable,
                __file__,
                "--variant",
                variant,
                "--out-tensor",
                str(out_path),
                "--device",
                args.device,
                "--preset",
                args.preset,
                "--batch",
                str(args.batch),
                "--image",
                str(args.image),
                "--width",
                str(args.width),
                "--iters",
                str(args.iters),
                *(["--tf32"] if args.tf32 else []),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                sys.exit(f"{variant} failed:\n{proc.stderr}")
            results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
            outs[variant] = torch.load(out_path, weights_only=True)
    for v, t in timings(args).items():
        results[v]["median_s"] = t
    ours, ref = outs["ours"], outs["unfold"]
    rel = ((ours - ref).abs().max() / ref.abs().max()).item()
    s = args.image // 8
    print(
        f"attention benchmark: preset={args.preset} batch={args.batch} image={args.image}x{args.image} "
        f"(grid {s}x{s}) width={args.width} device={args.device} torch={torch.__version__} "
        f"threads={torch.get_num_threads()} tf32={bool(args.tf32)}"
    )
    print(f"{'variant':<10}{'fwd+bwd median (s)':>20}{'peak memory (MiB)':>20}{'saved for backward (MiB)':>26}")
    for v, r in results.items():
        print(f"{v:<10}{r['median_s']:>20.4f}{r['peak_mib']:>20.1f}{r['saved_mib']:>26.1f}")
    speedup = results["unfold"]["median_s"] / results["ours"]["median_s"]
    mem_ratio = results["ours"]["peak_mib"] / results["unfold"]["peak_mib"]
    print(f"speed-up (unfold / ours): {speedup:.2f}x   (target >= 2x)")
    print(f"peak memory (ours / unfold): {mem_ratio:.2f}x   (target <= 0.4x)")
    saved_ratio = results["ours"]["saved_mib"] / results["unfold"]["saved_mib"]
    print(f"activations saved for backward (ours / unfold): {saved_ratio:.2f}x")
    print(f"max relative output difference: {rel:.2e}   (target <= 1e-5)")


if __name__ == "__main__":
    main()
