"""The benchmark scripts on the CPU: benchmarks/gpu.py runs every variant (``--cpu-smoke``) with torch alone
and its MFU arithmetic uses the card's dense bf16 peak; triton_blocks.py times tiles through the
interpreter; attention.py counts the ops of a step."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

GPU = ROOT / "benchmarks" / "gpu.py"
# the script runs where only torch (+ timm) is installed: these must not be imported
ABSENT = ("ray", "mlflow", "dvc", "pydantic", "webdataset")


def test_cpu_smoke_runs_every_variant_without_the_pipeline_stack(tmp_path: Path) -> None:
    rows_file = tmp_path / "rows.json"
    code = (
        "import runpy, sys\n"
        f"sys.modules.update(dict.fromkeys({ABSENT!r}))  # import of any of them fails\n"
        f"sys.argv = ['gpu.py', '--cpu-smoke', '--json', {str(rows_file)!r}]\n"
        f"runpy.run_path({str(GPU)!r}, run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(rows_file.read_text())
    variants = runpy.run_path(str(GPU))["VARIANTS"]
    assert [r["variant"] for r in rows] == list(variants)
    assert all(r["images_per_s"] > 0 and r["step_s"] > 0 for r in rows), rows
    flops = {r["gflop_per_step"] for r in rows}
    assert len(flops) == 1 and flops.pop() > 0  # counted once per model
    assert "| vista_r18 | bf16+cl+compile |" in proc.stdout  # the markdown table


@pytest.mark.parametrize(
    ("name", "peak"),
    [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
     ("NVIDIA A100-SXM4-80GB", 312.0), ("Some Future GPU", None)],
)  # fmt: skip
def test_peak_from_the_device_name(name: str, peak: float | None) -> None:
    assert runpy.run_path(str(GPU))["peak_tflops"](name) == peak


def test_triton_blocks_smoke_times_every_tile_through_the_interpreter() -> None:
    script = ROOT / "benchmarks" / "triton_blocks.py"
    cmd = [sys.executable, str(script), "--smoke", "--blocks", "8x64", "4x32", "--dtype", "float32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 1 | 8 | 4 | float32 |")]
    # the default tile first, then the others, each timed (a number in the fwd+bwd column)
    assert [r.split("|")[5].strip() for r in rows] == ["8x64", "4x32"], proc.stdout
    assert all(float(r.split("|")[9]) > 0 for r in rows), proc.stdout
    assert sum("fastest" in r for r in rows) == 1, proc.stdout


def test_triton_blocks_refuses_a_malformed_tile() -> None:
    script = ROOT / "benchmarks" / "triton_blocks.py"
    proc = subprocess.run([sys.executable, str(script), "--smoke", "--blocks", "8by64"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "--blocks '8by64': expected CxP" in proc.stderr


def test_attention_counts_the_ops_of_a_step() -> None:
    """``attention.py --count-ops``: the official preset's step runs 17 convolutions forward (the pairs that
    read one feature share one conv per dilation: 3 × 3, plus 3 projections, 3 message fusions and the
    2 fusion convs) and 9 message/evidence ops, one per pair and dilation."""
    script = ROOT / "benchmarks" / "attention.py"
    cmd = [sys.executable, str(script), "--device", "cpu", "--count-ops", "--image", "64", "--width", "16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("official float32: "))
    counts = dict(item.rsplit(" ", 1) for item in line.split("(", 1)[1].removesuffix(", ...)").split(", "))
    assert counts["convolution"] == counts["convolution_backward"] == "17", line
    assert counts["vista.message_evidence"] == "9", line
    assert int(line.split()[2]) > 17 + 17 + 9, line


def test_step_profile_smoke_splits_a_step_into_its_components() -> None:
    """``step_profile.py`` on the smoke profile with the CamVid recipe's switches (bf16, channels_last, fp16
    gradients): every component of both models gets a time, the neck's parts only for VISTA, the FLOPs
    of the step are counted (the evidence op's included), the two-rank all-reduce runs, and the ratios
    are printed against the last model."""
    script = ROOT / "benchmarks" / "step_profile.py"
    cmd = [sys.executable, str(script), "--profile", "smoke", "--steps", "1", "--rounds", "1", "--warmup", "0"]
    cmd += ["--set", "train.amp=true", "--set", "train.channels_last=true", "--set", "train.grad_compression=fp16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    vista, baseline = out.split("\nbaseline_r18: ")[0], out.split("\nbaseline_r18: ")[1].split("\nthroughput")[0]

    def rows(block: str) -> dict[str, list[float]]:
        table = {}
        for line in block.splitlines():
            parts = line.rsplit(maxsplit=5)
            if len(parts) == 6 and parts[3].endswith("%"):
                table[parts[0]] = [float(parts[1]), float(parts[2]), float(parts[4])]
        return table

    v, b = rows(vista), rows(baseline)
    for comp in ("backbone", "projection", "kernels", "evidence", "mean-field", "message", "decoder", "heads"):
        assert v[comp][0] > 0 and v[comp][1] > 0, (comp, vista)
    assert v["evidence"][2] > 0 and v["kernels"][2] > 0  # FLOPs: the op's own formula, and the convs
    assert "evidence" not in b and b["backbone"][2] == v["backbone"][2]  # the same backbone, counted alike
    assert any(k.startswith("all-reduce") and r[1] > 0 for k, r in v.items()), vista
    assert "optimizer" in vista and "with the all-reduce" in out
    ratio = next(x for x in out.splitlines() if x.strip().startswith("baseline_r18 ") and "x" in x)
    assert "1.000x" in ratio, out
