"""Where stages write the outputs that dvc.yaml declares and later stages read (the folders that
params.yaml names, e.g. ``train.models_dir``, are settings; these are fixed)."""

from __future__ import annotations

from pathlib import Path

EVAL_DIR = Path("eval")  # `vista evaluate`: metrics.json and plots/; `vista register` reads metrics.json
