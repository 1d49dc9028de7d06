#!/usr/bin/env bash
# The prepared GPU check: one device run, steps in order of importance, each with a time limit taken from
# what is left of $BUDGET seconds (default 540), so that a slow step cannot eat the ones after it.
# $ONLY (space-separated step names) runs those steps only, e.g. a second device call for the steps the
# first one had no time left for. Seconds a step took on an H100 (2026-11-27) in brackets:
#   model_tests: the CUDA model/kernel tests (pytest -m gpu: official test vectors, bf16 autocast, the Triton
#     kernels compiled vs the unfold oracle, no GPU sync in a training step) [20 + imports];
#   attention_target: the attention benchmark, issue 10's grid (fused/shifted/unfold, batch 2 @ 256² and
#     8 @ 480², float32 and bf16) [70];
#   attention_base: the same with the library of an earlier commit, side by side on the same machine, when
#     ./shared/base holds one (git archive BASE vista benchmarks | tar -x -C shared/base);
#   attention_graphs: batch 2 @ 256², bf16 then float32: fused eager and under torch.compile(mode=
#     "reduce-overhead") (CUDA graphs; the random draws on the GPU) against eager unfold;
#   gpu_py: benchmarks/gpu.py for vista_r50 (training steps: images/s, peak memory, MFU) [~150];
#   attention_cudnn / attention_tf32: the target grid with cuDNN's algorithm search / TF32 convs [70 each];
#   attention_profile: top kernels and launches of the module's fwd+bwd [12].
# (benchmarks/triton_blocks.py, the tile sweep, is not in the list: its table is in docs/benchmarks.md.)
# Needs only torch, timm, torchmetrics and pytest (run it with the python that has them first on PATH; a
# symlink to a venv's python outside the venv loses its packages). Writes at most 8 logs to $OUT (or
# /tmp/vista_gpu): a device run returns no more. The official test vectors are read from $VISTA_SHARED,
# else ./shared (a copy of ../shared/data/vista_official under ./shared/data/, git-ignored, for machines
# where ../shared is absent), else ../shared.
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
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  [ "$left" -lt "$max" ] && max=$left
  if [ "$max" -lt 15 ]; then echo "== $name: skipped, ${left}s left" | tee "$out/$name.txt"; return; fi
  echo "== $name (limit ${max}s, ${SECONDS}s so far)"
  timeout -k 5 "$max" "$@" 2>&1 | tee "$out/$name.txt"
  echo "== $name: exit ${PIPESTATUS[0]} at ${SECONDS}s" | tee -a "$out/$name.txt"
}

{ python -c "import torch, triton, timm; print('torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')"; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv; } 2>&1 | tee "$out/env.txt"
step model_tests 90 python -m pytest tests/vista/models -m gpu -q -p no:cacheprovider -o addopts="" -rs
cat "$out/env.txt" >> "$out/model_tests.txt" 2>/dev/null && rm "$out/env.txt"  # the 8-file limit
step attention_target 110 python benchmarks/attention.py --device cuda --target --iters 10
if [ -f shared/base/benchmarks/attention.py ]; then
  step attention_base 110 python shared/base/benchmarks/attention.py --device cuda --target --iters 10
fi
step attention_graphs 180 env TORCH_LOGS=cudagraphs python benchmarks/attention.py --device cuda --dtype bf16 float32 --variants fused unfold \
  --compile --compile-mode reduce-overhead --draws-on device --iters 10
step gpu_py 200 python benchmarks/gpu.py --models vista_r50
step attention_cudnn 110 python benchmarks/attention.py --device cuda --target --iters 10 --cudnn-benchmark
step attention_tf32 110 python benchmarks/attention.py --device cuda --target --iters 10 --tf32
step attention_profile 30 python benchmarks/attention.py --device cuda --profile
