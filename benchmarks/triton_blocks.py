"""Time the message/evidence Triton kernels per tile size and warp count on a GPU (tuning data).

For each (blocks, warps) the forward and the backward kernel of ``vista.models.triton_filter`` run at the
shapes the ``official`` preset gives them in ``benchmarks/attention.py``'s target grid: width 512 on the
finest feature grid (image ÷ 8), f_r ≠ f_e, k = 3, each dilation of the preset, float32 and bf16.
Times are ``triton.testing.do_bench`` medians (ms) summed over the dilations; the fastest row per shape
and dtype is marked. The defaults (``FWD_BLOCK``, ``BWD_BLOCK``, ``NUM_WARPS``) are the first row.

``--smoke`` runs one tiny shape and dilation 1 per row on CPU tensors through Triton's interpreter (checks the script;
its times mean nothing).

Usage: ``python benchmarks/triton_blocks.py [--blocks 16x32 8x64 ...] [--warps 4 8] [--smoke]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vista.models import triton_filter  # noqa: E402

DEFAULT_BLOCKS = ["16x32", "8x32", "8x64", "16x64", "32x32", "4x128", "8x128", "32x16"]
SHAPES = [(2, 256), (8, 480)]  # (batch, image) as in attention.py --target
DILATIONS = (1, 4, 8)  # the official preset's
WIDTH, K = 512, 3


def _bench(fn, cuda: bool) -> float:  # noqa: ANN001
    if cuda:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=50))
    tic = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - tic)


def time_config(
    batch: int,
    grid: int,
    dtype: torch.dtype,
    blocks: tuple[int, int],
    warps: int,
    device: str,
    width: int,
    dilations: tuple[int, ...] = DILATIONS,
) -> tuple[float, float]:
    """Forward and backward ms, summed over the dilations."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    fe, fr = rnd(batch, width, grid, grid), rnd(batch, width, grid, grid)
    w, ke, kr = (rnd(batch, K * K, grid, grid) for _ in range(3))
    gs, gphi = rnd(batch, width, grid, grid), rnd(batch, width, grid, grid)
    triton_filter.NUM_WARPS = warps
    fwd = bwd = 0.0
    cuda = device == "cuda"
    for d in dilations:
        s, _ = triton_filter.evidence_forward(fe, fr, w, ke, kr, d, K, blocks=blocks)  # compiles
        fwd += _bench(lambda d=d: triton_filter.evidence_forward(fe, fr, w, ke, kr, d, K, blocks=blocks), cuda)
        bwd += _bench(
            lambda d=d, s=s: triton_filter.evidence_backward(gs, gphi, fe, fr, w, ke, kr, s, d, K, blocks=blocks),
            cuda,
        )
    return fwd, bwd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", nargs="+", default=DEFAULT_BLOCKS, help="CxP tiles (channels x pixels)")
    ap.add_argument("--warps", nargs="+", type=int, default=[4, 8])
    ap.add_argument("--dtype", nargs="+", default=["float32", "bf16"], choices=["float32", "bf16"])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU through the interpreter")
    args = ap.parse_args()
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/triton_blocks.py: no CUDA device here (--smoke checks the script on a CPU)")
    default = f"{triton_filter.FWD_BLOCK[0]}x{triton_filter.FWD_BLOCK[1]}"
    blocks = [default] + [b for b in args.blocks if b != default]
    parsed = []
    for b in blocks:
        try:
            c, p = (int(x) for x in b.split("x"))
        except ValueError:
            raise SystemExit(f"--blocks {b!r}: expected CxP, e.g. 16x32") from None
        parsed.append((c, p))
    shapes = [(1, 8, 4)] if args.smoke else [(bs, img // 8, WIDTH) for bs, img in SHAPES]
    warps = args.warps[:1] if args.smoke else args.warps
    dilations = (1,) if args.smoke else DILATIONS
    dev_name = torch.cuda.get_device_name() if device == "cuda" else "CPU (interpreter smoke)"
    print(f"# {dev_name}, torch {torch.__version__}; k={K}, dilations {dilations}, f_r != f_e; ms, sum over dilations")
    print("| batch | grid | width | dtype | block CxP | warps | fwd ms | bwd ms | fwd+bwd ms | |")
    print("|---:|---:|---:|---|---|---:|---:|---:|---:|---|")
    dtypes = {"float32": torch.float32, "bf16": torch.bfloat16}
    for batch, grid, width in shapes:
        for dname in args.dtype:
            rows = []
            for blk in parsed:
                for wp in warps:
                    try:
                        f, b = time_config(batch, grid, dtypes[dname], blk, wp, device, width, dilations)
                    except Exception as e:  # noqa: BLE001 - a tile that does not compile is a result too
                        print(f"| {batch} | {grid} | {width} | {dname} | {blk[0]}x{blk[1]} | {wp} | failed: "
                              f"{type(e).__name__}: {str(e).splitlines()[0][:80]} | | | |", flush=True)  # fmt: skip
                        continue
                    rows.append((f + b, f, b, blk, wp))
            best = min(r[0] for r in rows) if rows else None
            for tot, f, b, blk, wp in rows:
                mark = "fastest" if tot == best else ""
                print(f"| {batch} | {grid} | {width} | {dname} | {blk[0]}x{blk[1]} | {wp} | {f:.3f} | {b:.3f} | "
                      f"{tot:.3f} | {mark} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
