#!/usr/bin/env bash
# The prepared GPU check: one device run, steps in order of importance, each with a time limit taken from
# what is left of $BUDGET seconds (default 540), so that a slow step cannot eat the ones after it.
# Seconds each step took on an H100 (2026-11-27) in brackets:
#   1. the CUDA model/kernel tests (pytest -m gpu: official test vectors, bf16 autocast, the Triton kernels
#      compiled vs the unfold oracle, no GPU sync in a training step) [20 + imports];
#   2. the attention benchmark on CUDA, issue 10's target grid (fused/shifted/unfold, batch 2 @ 256² and
#      8 @ 480², float32 and bf16) [70]; again with cuDNN's algorithm search; again with TF32 convolutions;
#   3. benchmarks/gpu.py (vista_r50 and baseline_r50 training steps: images/s, peak memory, MFU) [240];
#   4. the attention benchmark with torch.compile at batch 2 @ 256², float32 [~80];
#   5. the Triton kernels per tile size and warp count (benchmarks/triton_blocks.py) [75];
#   6. a profile of the module's fwd+bwd [12].
# Needs only torch, timm, torchmetrics and pytest (run it with the python that has them first on PATH; a
# symlink to a venv's python outside the venv loses its packages). Writes 8 logs to $OUT (or /tmp/vista_gpu).
# The official test vectors are read from $VISTA_SHARED, else ./shared (a copy of ../shared/data/vista_official
# under ./shared/data/, git-ignored, for machines where ../shared is absent), else ../shared.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/vista_gpu}
budget=${BUDGET:-540}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ -z "${VISTA_SHARED:-}" ] && [ -d shared/data/vista_official ]; then export VISTA_SHARED=$PWD/shared; fi

# step NAME MAX_SECONDS CMD...: runs CMD with the smaller of MAX_SECONDS and what is left, tee'd to $out/NAME.txt
step() {
  local name=$1 max=$2 left=$((budget - SECONDS))
  shift 2
  [ "$left" -lt "$max" ] && max=$left
  if [ "$max" -lt 15 ]; then echo "== $name: skipped, ${left}s left" | tee "$out/$name.txt"; return; fi
  echo "== $name (limit ${max}s, ${SECONDS}s so far)"
  timeout -k 5 "$max" "$@" 2>&1 | tee "$out/$name.txt"
  echo "== $name: exit ${PIPESTATUS[0]} at ${SECONDS}s" | tee -a "$out/$name.txt"
}

{ python -c "import torch, triton, timm; print('torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')"; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv; } 2>&1 | tee "$out/env.txt"
step model_tests 90 python -m pytest tests/models -m gpu -q -p no:cacheprovider -o addopts="" -rs
cat "$out/env.txt" >> "$out/model_tests.txt" && rm "$out/env.txt"  # at most 8 files come back from a device run
step attention_target 110 python benchmarks/attention.py --device cuda --target --iters 10
step attention_cudnn 110 python benchmarks/attention.py --device cuda --target --iters 10 --cudnn-benchmark
step attention_tf32 110 python benchmarks/attention.py --device cuda --target --iters 10 --tf32
step gpu_py 240 python benchmarks/gpu.py
step attention_compile 120 python benchmarks/attention.py --device cuda --compile --variants fused unfold --iters 10
step triton_blocks 90 python benchmarks/triton_blocks.py
step attention_profile 30 python benchmarks/attention.py --device cuda --profile
