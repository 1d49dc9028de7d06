"""Data-loading throughput (samples/s), one run, same samples everywhere:

1. synthetic generation rate (procedural rendering);
2. decode-only floor: decode + to-tensor of the same encoded files, straight from disk, in a loop;
3. loose files through a plain map-style ``Dataset`` + ``DataLoader`` (0 workers);
4. shards through the training pipeline (resampled shards, shuffle buffer, paired transforms, batching),
   with 0 and 2 loader workers; also with augmentation off, to separate reading from augmenting.

Target: shard pipeline >= 0.8x the decode-only floor.

Usage: ``python benchmarks/data.py [--samples 384] [--height 240 --width 320] [--batch 8]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vista.data.batch import to_tensors  # noqa: E402
from vista.data.codec import decode_sample, encode_sample  # noqa: E402
from vista.data.manifest import prepare  # noqa: E402
from vista.data.shards import write_shards  # noqa: E402
from vista.data.sources.base import get_source  # noqa: E402
from vista.data.transforms import TrainTransform  # noqa: E402
from vista.data.webdata import train_loader  # noqa: E402

MEMBERS = ("rgb.png", "depth.png", "seg.png", "normal.npy", "meta.json")


def read_loose(folder: Path) -> dict:
    raw = {"__key__": folder.name}
    for m in MEMBERS:
        p = folder / m
        if p.exists():
            raw[m] = p.read_bytes()
    return raw


class LooseFiles(Dataset):
    def __init__(self, folders: list[Path]) -> None:
        self.folders = folders

    def __len__(self) -> int:
        return len(self.folders)

    def __getitem__(self, i: int) -> dict:
        s = decode_sample(read_loose(self.folders[i]))
        return to_tensors({k: v for k, v in s.items() if k not in ("meta", "key")})


def rate(n: int, seconds: float) -> float:
    return n / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=384)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--shard-size", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)  # decoding is per-sample work; keep runs comparable

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        src = get_source("synthetic", "", height=args.height, width=args.width, counts={"train": args.samples})
        refs = src.list("train")
        t = time.perf_counter()
        samples = [src.load(r) for r in refs]
        gen = rate(len(samples), time.perf_counter() - t)

        # the same encoded members as loose files and as shards
        folders = []
        for s in samples:
            d = tmp / "loose" / s["key"]
            d.mkdir(parents=True)
            for name, data in encode_sample(s).items():
                if name != "__key__":
                    (d / name).write_bytes(data)
            folders.append(d)
        prepare(src, ["train"], tmp / "prepared")
        write_shards(src, tmp / "prepared" / "manifest.parquet", tmp / "shards", max_samples=args.shard_size)
        n = len(folders)

        t = time.perf_counter()
        for f in folders:
            to_tensors(decode_sample(read_loose(f)))
        floor = rate(n, time.perf_counter() - t)

        t = time.perf_counter()
        for _ in DataLoader(LooseFiles(folders), batch_size=args.batch, num_workers=0):
            pass
        loose = rate(n, time.perf_counter() - t)

        results = {}
        for label, transform in (
            ("augmented", TrainTransform()),
            ("no augmentation", TrainTransform(scale_range=(1.0, 1.0), hflip=False, color_jitter=0.0)),
        ):
            for workers in (0, 2):
                loader = train_loader(
                    str(tmp / "shards"),
                    args.batch,
                    transform,
                    num_workers=workers,
                    shuffle_buffer=64,
                    samples_per_epoch=n,
                )
                next(iter(loader))  # start workers, fill buffers
                t = time.perf_counter()
                seen = sum(b["rgb"].shape[0] for b in loader)
                results[(label, workers)] = rate(seen, time.perf_counter() - t)
                del loader

    mib = sum(len(v) for v in encode_sample(samples[0]).values() if isinstance(v, bytes)) / 2**20
    print(
        f"data benchmark: {n} synthetic samples {args.height}x{args.width} (rgb png, depth png, seg png, "
        f"normal npy; {mib:.2f} MiB/sample), batch {args.batch}, shards of {args.shard_size}, "
        f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs"
    )
    print(f"{'synthetic generation':<44}{gen:>10.1f} samples/s")
    print(f"{'decode-only floor':<44}{floor:>10.1f} samples/s")
    print(f"{'loose files, plain Dataset (0 workers)':<44}{loose:>10.1f} samples/s  ({loose / floor:.2f}x floor)")
    for (label, workers), r in results.items():
        name = f"shards, training pipeline, {label}, {workers} workers"
        print(f"{name:<44}{r:>10.1f} samples/s  ({r / floor:.2f}x floor)")
    print("target: shard pipeline >= 0.80x the decode-only floor")


if __name__ == "__main__":
    main()
