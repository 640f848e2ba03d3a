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
from typing import Callable, Optional, Sequence

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


@dataclass
class TokenFeatures:
    """A frozen text backbone's hidden states for many captions, stored flat: caption i is
    ``values[offsets[i]:offsets[i + 1]]`` ([L_i, H], float16)."""

    values: np.ndarray  # [total tokens, H]
    offsets: np.ndarray  # [N + 1]

    def __getitem__(self, index: int) -> np.ndarray:
        return self.values[self.offsets[index] : self.offsets[index + 1]]


@torch.no_grad()
def frozen_text_features(model, captions: Sequence[str], cache_dir: Optional[Path] = None,
                         batch_size: int = 256, before_batch: Optional[Callable[[], None]] = None) -> TokenFeatures:
    """Run the (frozen) text backbone once over every caption; cached on disk when ``cache_dir`` is set.
    ``before_batch`` is called before each batch (e.g. to take more threads once they are free)."""
    digest = hashlib.sha1(f"{model.config.text_backbone}:{model.config.max_text_length}".encode())
    for caption in captions:
        digest.update(caption.encode() + b"\n")
    cache_file = None if cache_dir is None else Path(cache_dir) / f"text-{digest.hexdigest()[:16]}.npz"
    if cache_file is not None and cache_file.is_file():
        stored = np.load(cache_file)
        return TokenFeatures(stored["values"], stored["offsets"])
    if model.txt_enc.bert.training:
        raise ValueError("text features can be precomputed only for a backbone in eval mode (a frozen one)")
    order = sorted(range(len(captions)), key=lambda i: len(captions[i]))  # similar lengths batch together
    rows: list[Optional[np.ndarray]] = [None] * len(captions)
    for start in tqdm(range(0, len(order), batch_size), desc="text features", unit="batch", mininterval=5.0):
        if before_batch is not None:
            before_batch()
        batch = order[start : start + batch_size]
        input_ids, batch_lengths = model.tokenize([captions[i] for i in batch])
        hidden = model.txt_enc.backbone(input_ids.to(model.device)).float().cpu()
        for i, row, n in zip(batch, hidden, batch_lengths.tolist()):
            rows[i] = row[:n].half().numpy()
    lengths = [len(r) for r in rows]
    features = TokenFeatures(np.concatenate(rows), np.concatenate([[0], np.cumsum(lengths)]))
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, values=features.values, offsets=features.offsets)
        os.replace(tmp, cache_file)
    return features


class CaptionPairs(torch.utils.data.Dataset):
    """One item per caption: (regions [R, D], clip embedding or None, token ids with [CLS]/[SEP],
    the backbone's hidden states [L, H] when precomputed, else None)."""

    def __init__(self, split: RetrievalSplit, tokenizer, max_length: int, augment: bool = False, seed: int = 0,
                 text_features: Optional[TokenFeatures] = None):
        if augment and text_features is not None:
            raise ValueError("caption augmentation changes the tokens: it cannot use precomputed text features")
        self.split, self.tokenizer, self.max_length, self.augment = split, tokenizer, max_length, augment
        self.text_features = text_features
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
        ids = torch.tensor(self.token_ids(self.split.captions[index]))
        hidden = None if self.text_features is None else torch.from_numpy(self.text_features[index].copy())
        return regions, clip, ids, hidden


    def batch(self, indices: Sequence[int]):
        """The batch ``collate_pairs`` would make of these items, gathered with one index per array
        when the text features are precomputed (nothing is tokenized then: input_ids is None)."""
        if self.text_features is None:
            return collate_pairs([self[i] for i in indices])
        images = np.asarray(indices) // CAPTIONS_PER_IMAGE
        regions = torch.from_numpy(np.asarray(self.split.regions[images], dtype=np.float32))  # [B, R, D]
        region_lengths = torch.full((len(images),), regions.size(1), dtype=torch.long)
        clip = None if self.split.clip_embeds is None else torch.from_numpy(
            np.asarray(self.split.clip_embeds[images], dtype=np.float32))  # [B, C]
        rows = [self.text_features[i] for i in indices]
        text_lengths = torch.tensor([len(row) for row in rows])
        hidden = np.zeros((len(rows), int(text_lengths.max()), rows[0].shape[1]), dtype=np.float32)  # [B, L, H]
        for i, row in enumerate(rows):
            hidden[i, : len(row)] = row
        return regions, region_lengths, None, text_lengths, clip, torch.from_numpy(hidden)


class CaptionBatches(torch.utils.data.Dataset):
    """Batches of CaptionPairs by index lists: pair with a BatchSampler and ``batch_size=None``."""

    def __init__(self, pairs: CaptionPairs):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, indices: Sequence[int]):
        return self.pairs.batch(indices)


def collate_pairs(items):
    """-> regions [B, R, D], region lengths [B], input_ids [B, L] (pad 0), text lengths [B],
    clip embeddings [B, C] or None, backbone hidden states [B, L, H] or None."""
    regions, clips, ids, hidden = zip(*items)
    regions = torch.stack(regions)
    region_lengths = torch.full((len(items),), regions.size(1), dtype=torch.long)
    text_lengths = torch.tensor([len(x) for x in ids])
    input_ids = torch.nn.utils.rnn.pad_sequence(list(ids), batch_first=True, padding_value=0)
    clip_embeds = None if clips[0] is None else torch.stack(clips)
    if hidden[0] is not None:
        hidden = torch.nn.utils.rnn.pad_sequence(list(hidden), batch_first=True).float()
        if hidden.size(1) != input_ids.size(1):
            raise ValueError("precomputed text features do not match the tokenized captions")
    else:
        hidden = None
    return regions, region_lengths, input_ids, text_lengths, clip_embeds, hidden
