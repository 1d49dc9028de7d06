"""Registers and spills of the message/evidence Triton kernels, compiled for a GPU without one.

Compiles each kernel ahead of time for an NVIDIA target (default sm_90, Hopper) through triton's own
compiler and ptxas, and prints ptxas' register count and spill bytes per (kernel, dtype, k, f_r = f_e,
block, warps). Spills or > ~128 registers per thread (few resident warps) are the signs of a bad tile
size; timing still needs a GPU (``benchmarks/attention.py --device cuda``).

Usage: ``python benchmarks/triton_registers.py [--arch 90] [--blocks 16x64 16x32] [--warps 4]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vista.models import triton_filter  # noqa: E402

PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


def ptxas_info(name: str, dtype: str, k: int, same: bool, block: tuple[int, int], warps: int, arch: int) -> str:
    fn = JITFunction({"fwd": triton_filter._evidence_fwd, "bwd": triton_filter._evidence_bwd}[name])
    consts = {"K": k, "SAME": same, "ACC": tl.float32, "BLOCK_C": block[0], "BLOCK_P": block[1]}
    partials = ("g_w", "g_ke", "g_kr")  # kernel-gradient partial sums: float32 whatever the dtype
    sig = {
        a: "constexpr"
        if a in consts
        else "i32"
        if a in ("B", "C", "H", "W", "DIL")
        else "*fp32"
        if a in partials
        else f"*{dtype}"
        for a in fn.arg_names
    }
    kernel = triton.compile(
        ASTSource(fn, sig, consts), target=GPUTarget("cuda", arch, 32), options={"num_warps": warps}
    )
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "k.ptx"
        ptx.write_text(kernel.asm["ptx"])
        suffix = "a" if arch >= 90 else ""
        cmd = [str(PTXAS), "-v", f"--gpu-name=sm_{arch}{suffix}", str(ptx), "-o", str(Path(tmp) / "k.o")]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    return "; ".join(
        line.split(":", 1)[-1].strip() for line in out.splitlines() if "registers" in line or "spill" in line
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90, help="compute capability × 10 (90: H100/H200)")
    ap.add_argument("--blocks", nargs="+", help="CxP per program (default: the module's FWD_BLOCK and BWD_BLOCK)")
    ap.add_argument("--warps", type=int, default=triton_filter.NUM_WARPS)
    args = ap.parse_args()
    for name, default in (("fwd", triton_filter.FWD_BLOCK), ("bwd", triton_filter.BWD_BLOCK)):
        blocks = [tuple(int(x) for x in b.split("x")) for b in args.blocks] if args.blocks else [default]
        for block in blocks:
            for dtype, k, same in (("fp32", 3, False), ("fp32", 3, True), ("bf16", 3, False), ("fp32", 5, False)):
                info = ptxas_info(name, dtype, k, same, block, args.warps, args.arch)
                print(f"{name} {dtype} k={k} same={same!s:<5} block={block[0]}x{block[1]} warps={args.warps}: {info}")


if __name__ == "__main__":
    main()
