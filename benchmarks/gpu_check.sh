#!/usr/bin/env bash
# The prepared GPU check (one device run, ~2-3 min): CUDA model/attention tests (official test vectors,
# bf16 autocast, the Triton kernels vs the unfold oracle) and the attention benchmark on CUDA (issue 10's
# target grid: fused/shifted/unfold, two sizes, float32 and bf16; TF32), plus a profile of the model's fwd+bwd.
# Optional, slower (inductor compiles the module): python benchmarks/attention.py --device cuda --compile
# Needs only torch, timm and pytest.
# The official test vectors are read from $VISTA_SHARED, else ./shared (a copy of ../shared/data/vista_official
# under ./shared/data/, git-ignored, for machines where ../shared is absent), else ../shared.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/vista_gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ -z "${VISTA_SHARED:-}" ] && [ -d shared/data/vista_official ]; then export VISTA_SHARED=$PWD/shared; fi
python -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee "$out/env.txt"
python -m pytest tests/models -q -p no:cacheprovider -o addopts="" -rs 2>&1 | tee "$out/model_tests.txt" | tail -5
# issue 10's target: fused (Triton) vs shifted vs unfold, batch 2 @ 256² and 8 @ 480², float32 and bf16
python benchmarks/attention.py --device cuda --target --iters 10 2>&1 | tee "$out/attention_cuda_target.txt"
python benchmarks/attention.py --device cuda --iters 10 --tf32 2>&1 | tee "$out/attention_cuda_tf32.txt"
python benchmarks/attention.py --device cuda --profile 2>&1 > "$out/attention_cuda_profile.txt"
tail -3 "$out/attention_cuda_profile.txt"
