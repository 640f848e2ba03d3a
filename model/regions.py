"""Region extractors: raw image → region features [R, D] (and the CLIP embedding CGE is guided by).

``precomputed``: SCAN/BUTD bottom-up-attention features, the paper's setting. They come from a Faster
  R-CNN detector that is not part of this project, so raw images cannot be encoded; we say so.
``clip-grid``: the patch tokens of a frozen open_clip vision tower (after its final LayerNorm, before the
  projection, CLS excluded). The pooled, projected CLIP embedding is returned too: it is CGE's guide.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .config import USERConfig


@dataclass
class Regions:
    features: torch.Tensor  # [B, R, D]
    lengths: torch.Tensor  # [B]
    clip_embeds: Optional[torch.Tensor] = None  # [B, clip_dim], L2-normalised


def resolve_clip_name(name: str, base_dir: Optional[Path]) -> str:
    """``local-dir:rel`` is relative to the checkpoint folder that names it."""
    prefix = "local-dir:"
    if name.startswith(prefix) and base_dir is not None:
        path = Path(name[len(prefix):]).expanduser()
        if not path.is_absolute():
            return prefix + str((base_dir / path).resolve())
    return name


class ClipGridExtractor:
    """Patch tokens of a frozen open_clip vision tower as regions. Not an nn.Module on purpose: the CLIP
    is referenced by the USER checkpoint, never saved inside it."""

    def __init__(self, clip_model: str, pretrained: Optional[str] = None, base_dir: Optional[Path] = None):
        import open_clip  # heavy import, only when a CLIP is actually needed

        self.name = resolve_clip_name(clip_model, base_dir)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(self.name, pretrained=pretrained)
        except Exception as err:
            raise RuntimeError(
                f"could not load the CLIP region extractor {self.name!r} (pretrained={pretrained!r}): {err}. "
                "Name it as 'hf-hub:org/repo', 'local-dir:/path' (open_clip_config.json + "
                "open_clip_model.safetensors) or a built-in open_clip name with a cached pretrained tag."
            ) from err
        model.eval().requires_grad_(False)
        model.visual.output_tokens = True
        self.visual = model.visual
        self.preprocess = preprocess
        self._pil_steps, self._mean, self._std = split_preprocess(preprocess)
        if self._pil_steps is not None:
            self._input_size = identity_size(self._pil_steps)

    @property
    def device(self) -> torch.device:
        return next(self.visual.parameters()).device

    def to(self, device: torch.device | str) -> "ClipGridExtractor":
        self.visual.to(device)
        return self

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> preprocessed pixels [B, 3, H, W]: the PIL steps (resize, crop) per image, then
        to-tensor and normalisation once for the whole batch (the same numbers, half the time)."""
        images = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
        if self._pil_steps is None:
            return torch.stack([self.preprocess(image) for image in images])
        arrays = np.stack([
            np.asarray(image if image.size == self._input_size else self._pil_steps(image), dtype=np.uint8)
            for image in images
        ])  # [B, H, W, 3]; an image already at the input size needs no resize or crop
        return normalise_pixels(torch.from_numpy(arrays), self._mean, self._std)

    @torch.no_grad()
    def from_pixels(self, pixels: torch.Tensor) -> Regions:
        pooled, tokens = self.visual(pixels.to(self.device))  # [B, clip_dim], [B, R, D]
        lengths = torch.full((tokens.size(0),), tokens.size(1), dtype=torch.long, device=tokens.device)
        clip_embeds = torch.nn.functional.normalize(pooled.float(), dim=-1)
        return Regions(tokens.float(), lengths, clip_embeds)

    def __call__(self, images: Sequence[Image.Image]) -> Regions:
        return self.from_pixels(self.pixels(images))


def split_preprocess(preprocess):
    """open_clip's Compose(PIL steps..., ToTensor, Normalize) -> (PIL steps, mean [1,3,1,1], std [1,3,1,1]),
    or (None, None, None) for any other pipeline (then it is applied as it is, image by image)."""
    from torchvision import transforms

    steps = list(getattr(preprocess, "transforms", []))
    names = [type(step).__name__ for step in steps]
    if len(steps) < 2 or names[-2] not in ("ToTensor", "MaybeToTensor") or not isinstance(steps[-1], transforms.Normalize):
        return None, None, None
    mean = torch.tensor(steps[-1].mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(steps[-1].std, dtype=torch.float32).view(1, 3, 1, 1)
    return transforms.Compose(steps[:-2]), mean, std


def normalise_pixels(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 pixels [B, H, W, 3] -> (x / 255 - mean) / std, float [B, 3, H, W], in one fused multiply-add."""
    return torch.addcmul(-mean / std, pixels.permute(0, 3, 1, 2).float(), 1.0 / (255.0 * std))


def identity_size(pil_steps) -> Optional[tuple[int, int]]:
    """(S, S) when the PIL steps are Resize(S) and CenterCrop(S) (plus open_clip's mode conversion), which
    leave an S x S RGB image as it is; None when that cannot be told from the steps."""
    from torchvision import transforms

    sizes = []
    for step in pil_steps.transforms:
        if type(step).__name__ == "MaybeConvertMode":  # RGB stays RGB
            continue
        if not isinstance(step, (transforms.Resize, transforms.CenterCrop)) or getattr(step, "max_size", None):
            return None
        sizes += list(step.size) if isinstance(step.size, (list, tuple)) else [step.size]
    return (sizes[0], sizes[0]) if sizes and len(set(sizes)) == 1 else None


class PrecomputedRegions:
    """Placeholder extractor for checkpoints trained on BUTD features: explains why images can't be encoded."""

    def __call__(self, images: Sequence[Image.Image]) -> Regions:
        raise ValueError(
            "this USER checkpoint was trained on precomputed bottom-up-attention (BUTD) region features; "
            "raw images need the Faster R-CNN detector that produced them, which is not available here. "
            "Use precomputed features (encode_regions), or a checkpoint with region_extractor='clip-grid'."
        )

    pixels = from_pixels = __call__

    def to(self, device: torch.device | str) -> "PrecomputedRegions":
        return self


def build_extractor(config: USERConfig, base_dir: Optional[Path] = None):
    if config.region_extractor == "clip-grid":
        return ClipGridExtractor(config.clip_model, config.clip_pretrained, base_dir)
    return PrecomputedRegions()


def save_open_clip(clip_model, model_cfg: dict, folder: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write an open_clip model in the layout ``local-dir:`` and ``hf-hub:`` load
    (``open_clip_config.json`` with ``model_cfg`` + ``preprocess_cfg``, ``open_clip_model.safetensors``)."""
    import json

    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().to(dtype if v.is_floating_point() else v.dtype).contiguous()
             for k, v in clip_model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))  # open_clip casts back on load
    preprocess_cfg = {
        "mean": list(getattr(clip_model.visual, "image_mean", None) or OPENAI_DATASET_MEAN),
        "std": list(getattr(clip_model.visual, "image_std", None) or OPENAI_DATASET_STD),
    }
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder
