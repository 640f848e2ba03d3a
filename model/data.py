"""Datasets for training and evaluation, in the two layouts the field uses.

SCAN precomputed (``{split}_ims.npy`` [N, R, D], ``{split}_caps.txt`` 5 lines per image,
``{split}_ids.txt``; optionally ``{split}_clip.npy`` [N, C] for CGE), or raw images with a
Karpathy-style ``dataset.json`` (``images[].filename``, ``split``, ``sentences[].raw``) whose region
features are computed by the model's extractor and cached on disk (the extractor is frozen).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .evaluation import CAPTIONS_PER_IMAGE

KARPATHY_NAMES = ("dataset.json", "dataset_coco.json", "dataset_flickr30k.json", "dataset_f30k.json")


@dataclass
class RetrievalSplit:
    """N images as region features and their 5N captions (image i owns captions 5i..5i+4)."""

    regions: np.ndarray  # [N, R, D] (may be a memory map)
    captions: list[str]  # 5N
    image_ids: list[str]  # N
    clip_embeds: Optional[np.ndarray] = None  # [N, C]
    image_paths: Optional[list[Path]] = None  # raw images, when the split has them

    def __len__(self) -> int:
        return len(self.image_ids)

    def subset(self, n_images: int) -> "RetrievalSplit":
        return RetrievalSplit(
            self.regions[:n_images],
            self.captions[: CAPTIONS_PER_IMAGE * n_images],
            self.image_ids[:n_images],
            None if self.clip_embeds is None else self.clip_embeds[:n_images],
            None if self.image_paths is None else self.image_paths[:n_images],
        )


def load_split(data_dir: str | Path, split: str, extractor=None, cache: bool = True) -> RetrievalSplit:
    """Load ``split`` from ``data_dir`` in whichever layout it has."""
    data_dir = Path(data_dir)
    if (data_dir / f"{split}_caps.txt").is_file():
        return load_precomputed(data_dir, split)
    karpathy = find_karpathy_json(data_dir)
    if karpathy is None:
        raise FileNotFoundError(
            f"{data_dir} has neither {split}_caps.txt (SCAN precomputed) nor a Karpathy JSON ({', '.join(KARPATHY_NAMES)})"
        )
    if extractor is None:
        raise ValueError(f"{data_dir} holds raw images: a region extractor is needed to encode them")
    return load_karpathy(data_dir, karpathy, split, extractor, cache)


def find_karpathy_json(data_dir: Path) -> Optional[Path]:
    return next((data_dir / n for n in KARPATHY_NAMES if (data_dir / n).is_file()), None)


def load_precomputed(data_dir: Path, split: str) -> RetrievalSplit:
    captions = (data_dir / f"{split}_caps.txt").read_text().strip("\n").split("\n")
    regions = np.load(data_dir / f"{split}_ims.npy", mmap_mode="r")
    if len(regions) == len(captions):  # some releases repeat each image once per caption
        regions = regions[::CAPTIONS_PER_IMAGE]
    if len(captions) != CAPTIONS_PER_IMAGE * len(regions):
        raise ValueError(f"{data_dir}/{split}: {len(regions)} images but {len(captions)} captions (need 5 each)")
    ids_path = data_dir / f"{split}_ids.txt"
    ids = ids_path.read_text().split() if ids_path.is_file() else [str(i) for i in range(len(regions))]
    ids = ids[:: CAPTIONS_PER_IMAGE] if len(ids) == len(captions) else ids
    clip_path = data_dir / f"{split}_clip.npy"
    clip_embeds = np.load(clip_path) if clip_path.is_file() else None
    return RetrievalSplit(regions, captions, ids[: len(regions)], clip_embeds)


def read_karpathy(json_path: Path, split: str) -> tuple[list[dict], list[str]]:
    """Entries of ``split`` ('restval' counts as train) and their first five captions each."""
    data = json.loads(json_path.read_text())
    wanted = {"train", "restval"} if split == "train" else {split}
    entries = [im for im in data["images"] if im.get("split") in wanted]
    captions = []
    for entry in entries:
        sentences = [s["raw"].strip() for s in entry["sentences"]][:CAPTIONS_PER_IMAGE]
        if len(sentences) < CAPTIONS_PER_IMAGE:
            raise ValueError(f"{json_path}: image {entry['filename']} has fewer than 5 captions")
        captions.extend(sentences)
    return entries, captions


def image_folder(data_dir: Path, entry: dict) -> Path:
    base = data_dir / "images"
    return base / entry["filepath"] / entry["filename"] if "filepath" in entry else base / entry["filename"]


def load_karpathy(data_dir: Path, json_path: Path, split: str, extractor, cache: bool) -> RetrievalSplit:
    entries, captions = read_karpathy(json_path, split)
    if not entries:
        raise ValueError(f"{json_path} has no images in split {split!r}")
    paths = [image_folder(data_dir, e) for e in entries]
    ids = [str(e.get("imgid", e.get("cocoid", e["filename"]))) for e in entries]
    key = fingerprint(extractor, paths)
    cache_file = data_dir / "cache" / f"{split}-{key}.npz"
    if cache and cache_file.is_file():
        stored = np.load(cache_file)
        return RetrievalSplit(stored["regions"], captions, ids, stored["clip_embeds"], paths)
    regions, clip_embeds = extract_all(extractor, paths, desc=f"regions {split}")
    if cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, regions=regions, clip_embeds=clip_embeds)
        os.replace(tmp, cache_file)  # atomic: a reader never sees half a file
    return RetrievalSplit(regions, captions, ids, clip_embeds, paths)


def fingerprint(extractor, paths: Sequence[Path]) -> str:
    digest = hashlib.sha1(str(getattr(extractor, "name", type(extractor).__name__)).encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return digest.hexdigest()[:16]


def extract_all(extractor, paths: Sequence[Path], batch_size: int = 64, desc: str = "regions"):
    """Region features (float16) and CLIP embeddings (float32) for every image, in batches."""
    regions, clip_embeds = [], []
    for start in tqdm(range(0, len(paths), batch_size), desc=desc, unit="batch"):
        images = [Image.open(p) for p in paths[start : start + batch_size]]
        out = extractor(images)
        regions.append(out.features.cpu().half().numpy())
        clip_embeds.append(out.clip_embeds.cpu().float().numpy())
    return np.concatenate(regions), np.concatenate(clip_embeds)


def augment_tokens(tokens: list[str], vocab: list[str], rng: random.Random) -> list[str]:
    """The release's caption augmentation: 20% of tokens are touched; of those half become [MASK],
    a tenth a random token, and the rest are dropped."""
    out = []
    for token in tokens:
        p = rng.random()
        if p >= 0.2:
            out.append(token)
        elif p < 0.1:
            out.append("[MASK]")
        elif p < 0.12:
            out.append(rng.choice(vocab))
    return out


class CaptionPairs(torch.utils.data.Dataset):
    """One item per caption: (regions [R, D], clip embedding or None, token ids with [CLS]/[SEP])."""

    def __init__(self, split: RetrievalSplit, tokenizer, max_length: int, augment: bool = False, seed: int = 0):
        self.split, self.tokenizer, self.max_length, self.augment = split, tokenizer, max_length, augment
        self.vocab = list(tokenizer.get_vocab()) if augment else []
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.split.captions)

    def token_ids(self, caption: str) -> list[int]:
        tokens = self.tokenizer.tokenize(caption)
        if self.augment:
            tokens = augment_tokens(tokens, self.vocab, self.rng)
        tokens = [self.tokenizer.cls_token, *tokens[: self.max_length - 2], self.tokenizer.sep_token]
        return self.tokenizer.convert_tokens_to_ids(tokens)

    def __getitem__(self, index: int):
        image = index // CAPTIONS_PER_IMAGE
        regions = torch.tensor(np.asarray(self.split.regions[image]), dtype=torch.float32)
        clip = None if self.split.clip_embeds is None else torch.tensor(self.split.clip_embeds[image], dtype=torch.float32)
        return regions, clip, torch.tensor(self.token_ids(self.split.captions[index]))


def collate_pairs(items):
    """-> regions [B, R, D], region lengths [B], input_ids [B, L] (pad 0), text lengths [B], clip [B, C]|None."""
    regions, clips, ids = zip(*items)
    regions = torch.stack(regions)
    region_lengths = torch.full((len(items),), regions.size(1), dtype=torch.long)
    text_lengths = torch.tensor([len(x) for x in ids])
    input_ids = torch.nn.utils.rnn.pad_sequence(list(ids), batch_first=True, padding_value=0)
    clip_embeds = None if clips[0] is None else torch.stack(clips)
    return regions, region_lengths, input_ids, text_lengths, clip_embeds
