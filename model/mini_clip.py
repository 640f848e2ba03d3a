"""A miniature CLIP: a small custom open_clip architecture trained contrastively on a Karpathy-layout
dataset, saved in open_clip's Hub layout so ``local-dir:`` (and ``hf-hub:``) load it like any CLIP.

Its patch tokens are USER's ``clip-grid`` regions and its image embedding is CGE's guide.

    python -m model.mini_clip --data data/scenes --out assets/mini-clip --epochs 6
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .data import find_karpathy_json, image_folder, read_karpathy
from .evaluation import CAPTIONS_PER_IMAGE
from .regions import normalise_pixels, save_open_clip, split_preprocess

MINI_CLIP_CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 96, "layers": 4, "width": 128, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}


class ImageCaptions(Dataset):
    """(pixels uint8 [H, W, 3], token ids [C]) per image, one of its five captions drawn at every visit.

    Every image is decoded and resized once and every caption tokenized once, up front, and kept in
    memory (20k 96-px scenes: 0.55 GB): decoding and tokenizing at every visit cost a third of each step.
    ``collate`` stacks a batch and applies to-tensor + normalisation once for the whole batch.
    """

    def __init__(self, data_dir: Path, split: str, preprocess, tokenizer):
        entries, captions = read_karpathy(find_karpathy_json(data_dir), split)
        pil_steps, self.mean, self.std = split_preprocess(preprocess)
        if pil_steps is None:
            raise ValueError("the mini CLIP expects open_clip's (PIL steps, ToTensor, Normalize) preprocessing")
        paths = [image_folder(data_dir, e) for e in entries]
        self.pixels = torch.from_numpy(np.stack([
            np.asarray(pil_steps(Image.open(path).convert("RGB")), dtype=np.uint8)
            for path in tqdm(paths, desc=f"decode {split}", unit="image", mininterval=5.0)
        ]))  # [N, H, W, 3]
        self.tokens = tokenizer(captions)  # [5N, context]

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int):
        caption = CAPTIONS_PER_IMAGE * index + int(torch.randint(CAPTIONS_PER_IMAGE, ()))
        return self.pixels[index], self.tokens[caption]

    def collate(self, items) -> tuple[torch.Tensor, torch.Tensor]:
        """-> normalised pixels [B, 3, H, W], token ids [B, C]."""
        pixels, tokens = zip(*items)
        return normalise_pixels(torch.stack(pixels), self.mean, self.std), torch.stack(tokens)


def train_mini_clip(
    data_dir: str | Path,
    out: str | Path,
    model_config: dict = MINI_CLIP_CONFIG,
    epochs: int = 6,
    minutes: float | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    before_step: Optional[Callable[[], None]] = None,
) -> Path:
    """Train for ``epochs`` (stopping early after ``minutes`` if given), then save to ``out`` (float16).
    ``before_step`` is called before each step (e.g. to take more threads once they are free)."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_config)
    size = model_config["vision_cfg"]["image_size"]
    preprocess = open_clip.image_transform(size, is_train=False)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=model_config["text_cfg"]["context_length"])
    dataset = ImageCaptions(Path(data_dir), "train", preprocess, tokenizer)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=dataset.collate)
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    total_steps = epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps, pct_start=0.05)
    deadline = None if minutes is None else time.time() + 60 * minutes
    model.train()
    log = []
    for epoch in range(epochs):
        bar = tqdm(loader, desc=f"mini-clip epoch {epoch}", unit="step", mininterval=5.0)
        losses = []
        for pixels, tokens in bar:
            if before_step is not None:
                before_step()
            image_features, text_features, logit_scale = model(pixels, tokens)
            loss = loss_fn(image_features, text_features, logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        log.append({"epoch": epoch, "loss": sum(losses) / len(losses)})
        if deadline is not None and time.time() > deadline:
            break
    model.eval()
    folder = save_open_clip(model, model_config, out, dtype=torch.float16)
    (folder / "training_log.json").write_text(json.dumps(log, indent=2))
    return folder


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--minutes", type=float, default=None, help="stop after this long, whatever the epoch")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args(argv)
    folder = train_mini_clip(args.data, args.out, epochs=args.epochs, minutes=args.minutes,
                             batch_size=args.batch_size, lr=args.lr)
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()


@torch.no_grad()
def clip_similarities(clip_name: str, data_dir: str | Path, split: str = "test", batch_size: int = 128) -> torch.Tensor:
    """The CLIP alone as a retrieval model: cosine similarities [N, 5N] of a Karpathy split."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(clip_name)
    model.eval()
    context = model.context_length if hasattr(model, "context_length") else 77
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=context)
    data_dir = Path(data_dir)
    entries, captions = read_karpathy(find_karpathy_json(data_dir), split)
    paths = [image_folder(data_dir, e) for e in entries]
    images = torch.cat([
        model.encode_image(torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths[i : i + batch_size]]),
                           normalize=True)
        for i in range(0, len(paths), batch_size)
    ])
    texts = torch.cat([model.encode_text(tokenizer(captions[i : i + 256]), normalize=True)
                       for i in range(0, len(captions), 256)])
    return images @ texts.t()
