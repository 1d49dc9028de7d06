"""The shard sample format (a public interface; see README "Shard format").

Members of a sample whose ``__key__`` is the source file's stem:
``rgb.png`` or ``rgb.jpg``; ``depth.png`` (uint16 millimetres, 0 = invalid) — or ``depth.npy`` (float32
metres, 0 = invalid) when a depth exceeds 65.535 m; ``seg.png`` (class ids, the dataset's void id kept as
is; 8-bit, or 16-bit when an id exceeds 255); ``normal.npy`` (float16 H×W×3); ``meta.json``.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image

MAX_DEPTH_MM = 65535


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def encode_sample(sample: dict[str, Any], rgb_format: str = "png", jpeg_quality: int = 95) -> dict[str, bytes | str]:
    """A loaded sample -> ``{"__key__": key, "rgb.png": bytes, ...}`` (deterministic bytes)."""
    out: dict[str, bytes | str] = {"__key__": sample["key"]}
    if rgb_format == "png":
        out["rgb.png"] = _png(sample["rgb"])
    elif rgb_format == "jpg":
        buf = io.BytesIO()
        Image.fromarray(sample["rgb"]).save(buf, format="JPEG", quality=jpeg_quality)
        out["rgb.jpg"] = buf.getvalue()
    else:
        raise ValueError(f"shard.rgb_format={rgb_format!r}: choose png or jpg")
    if "depth" in sample:
        d = np.asarray(sample["depth"], dtype=np.float64)
        valid = np.isfinite(d) & (d > 0)
        mm = np.where(valid, np.round(d * 1000.0), 0)
        if mm.max(initial=0) <= MAX_DEPTH_MM:
            out["depth.png"] = _png(mm.astype(np.uint16))
        else:
            out["depth.npy"] = _npy(np.where(valid, d, 0).astype(np.float32))
    if "seg" in sample:
        seg = np.asarray(sample["seg"])
        out["seg.png"] = _png(seg.astype(np.uint8 if seg.max(initial=0) < 256 else np.uint16))
    if "normal" in sample:
        out["normal.npy"] = _npy(np.asarray(sample["normal"], dtype=np.float16))
    out["meta.json"] = json.dumps(sample.get("meta", {}), sort_keys=True, default=str).encode()
    return out


def _image(data: bytes, mode: str | None = None) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        if mode is not None:
            im = im.convert(mode)
        return np.array(im)  # writable copy (torch.from_numpy needs one)


def decode_sample(raw: dict[str, Any]) -> dict[str, Any]:
    """Shard members (bytes) -> ``{"key", "rgb" uint8 H×W×3, "depth"? float32 metres, "seg"? uint8/uint16,
    "normal"? float32, "meta"}``. Handles 16-bit PNGs itself (generic image decoders turn them into 8 bit)."""
    out: dict[str, Any] = {"key": raw["__key__"]}
    if "rgb.png" in raw or "rgb.jpg" in raw:
        out["rgb"] = _image(raw.get("rgb.png") or raw["rgb.jpg"], "RGB")
    else:
        raise KeyError(f"sample {raw['__key__']!r} ({raw.get('__url__', '?')}): no rgb.png or rgb.jpg member")
    if "depth.png" in raw:
        out["depth"] = _image(raw["depth.png"]).astype(np.float32) / 1000.0
    elif "depth.npy" in raw:
        out["depth"] = np.load(io.BytesIO(raw["depth.npy"]), allow_pickle=False)
    if "seg.png" in raw:
        out["seg"] = _image(raw["seg.png"])  # uint8 (or uint16): compact until the loss takes .long()
    if "normal.npy" in raw:
        out["normal"] = np.load(io.BytesIO(raw["normal.npy"]), allow_pickle=False).astype(np.float32)
    out["meta"] = json.loads(raw["meta.json"]) if "meta.json" in raw else {}
    return out
