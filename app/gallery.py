"""Galleries: the images (and captions) the demo searches.

A gallery folder holds one of:
  * ``dataset.json`` (Karpathy style: ``images[].filename``, optional ``split``, ``sentences[].raw``)
    with the images under ``images/``;
  * ``captions.jsonl``: one ``{"image": "file.png", "captions": ["...", ...]}`` per line, images beside it
    or under ``images/``;
  * just images (``*.png``, ``*.jpg``, ...), in the folder or under ``images/``: no captions;
  * SCAN precomputed features (``test_ims.npy`` + ``test_caps.txt``) for ``precomputed``-region checkpoints.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}


@dataclass
class Gallery:
    root: Path
    image_ids: list[str]  # N display names
    image_paths: Optional[list[Path]]  # N files, None for precomputed features
    captions: list[str]  # M captions (may be empty)
    caption_image: np.ndarray  # [M] index of the image each caption describes
    precomputed_split: Optional[str] = None  # SCAN split name when features are precomputed

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def has_images(self) -> bool:
        return self.image_paths is not None

    def captions_of(self, image: int) -> list[int]:
        return np.flatnonzero(self.caption_image == image).tolist()

    def fingerprint(self) -> str:
        """Changes whenever an image file, a caption or the order changes."""
        digest = hashlib.sha1()
        for i, image_id in enumerate(self.image_ids):
            digest.update(image_id.encode())
            if self.image_paths is not None:
                stat = self.image_paths[i].stat()
                digest.update(f":{stat.st_size}:{stat.st_mtime_ns}".encode())
        if self.precomputed_split is not None:
            stat = (self.root / f"{self.precomputed_split}_ims.npy").stat()
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        for caption, owner in zip(self.captions, self.caption_image.tolist()):
            digest.update(f"{owner}:{caption}\n".encode())
        return digest.hexdigest()[:20]


def _image_dir(root: Path) -> Path:
    return root / "images" if (root / "images").is_dir() else root


def _from_pairs(root: Path, pairs: list[tuple[Path, list[str]]]) -> Gallery:
    captions, owners = [], []
    for index, (_, texts) in enumerate(pairs):
        captions += texts
        owners += [index] * len(texts)
    missing = [str(p) for p, _ in pairs if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"gallery {root}: {len(missing)} image files are missing, e.g. {missing[:3]}")
    return Gallery(root, [p.name for p, _ in pairs], [p for p, _ in pairs], captions, np.array(owners, dtype=np.int64))


def load_gallery(root: str | Path, split: Optional[str] = None) -> Gallery:
    """Load whichever gallery layout ``root`` holds (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"gallery folder {root} does not exist")
    if (root / "dataset.json").is_file():
        entries = json.loads((root / "dataset.json").read_text())["images"]
        if split is not None:
            entries = [e for e in entries if e.get("split") == split]
        base = _image_dir(root)
        return _from_pairs(root, [(base / e.get("filepath", "") / e["filename"],
                                   [s["raw"].strip() for s in e.get("sentences", [])]) for e in entries])
    if (root / "captions.jsonl").is_file():
        base = _image_dir(root)
        lines = [json.loads(line) for line in (root / "captions.jsonl").read_text().splitlines() if line.strip()]
        return _from_pairs(root, [(base / item["image"], list(item.get("captions", []))) for item in lines])
    scan_split = split or "test"
    if (root / f"{scan_split}_ims.npy").is_file():
        captions = (root / f"{scan_split}_caps.txt").read_text().strip("\n").split("\n")
        n_images = len(np.load(root / f"{scan_split}_ims.npy", mmap_mode="r"))
        per_image = max(len(captions) // max(n_images, 1), 1)
        owners = np.arange(len(captions)) // per_image
        return Gallery(root, [f"image {i}" for i in range(n_images)], None, captions, owners, scan_split)
    images = sorted(p for p in _image_dir(root).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(
            f"gallery {root} holds no dataset.json, captions.jsonl, SCAN features or images ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return _from_pairs(root, [(p, []) for p in images])
