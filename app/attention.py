"""What SGE and CGE attend to: their per-region weights drawn as heatmaps over the image.

For ``clip-grid`` checkpoints the regions are the CLIP's square patch grid, so a weight per region is a
weight per image tile. Two maps per model: the enhancement attention a (how much of the guide each
region receives) and, for SGE, the guide's region weights w (which regions the guide is made of).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from PIL import Image

from model import USERModel

# A perceptually ordered colour ramp (dark blue → teal → yellow), enough for a heatmap.
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)


@dataclass
class AttentionMaps:
    enhancement: Image.Image  # a over the image
    guide: Optional[Image.Image]  # SGE's w over the image (None for CGE)
    enhancement_grid: np.ndarray  # [g, g], sums of squares to 1
    guide_grid: Optional[np.ndarray]  # [g, g], sums to 1


def colourise(values: np.ndarray) -> np.ndarray:
    """[h, w] in [0, 1] -> [h, w, 3] uint8 through the ramp."""
    position = np.clip(values, 0, 1) * (len(_RAMP) - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, len(_RAMP) - 1)
    t = (position - low)[..., None]
    return (_RAMP[low] * (1 - t) + _RAMP[high] * t).astype(np.uint8)


def overlay(image: Image.Image, grid: np.ndarray, size: int = 288, alpha: float = 0.55) -> Image.Image:
    """The grid's values, normalised to [0, 1], blended over the image (nearest tiles, no smoothing)."""
    base = image.convert("RGB").resize((size, size), Image.BICUBIC)
    span = grid.max() - grid.min()
    normalised = (grid - grid.min()) / span if span > 0 else np.zeros_like(grid)
    heat = Image.fromarray(colourise(normalised)).resize((size, size), Image.NEAREST)
    return Image.blend(base, heat, alpha)


def to_grid(values: torch.Tensor) -> np.ndarray:
    n = values.numel()
    side = int(math.isqrt(n))
    if side * side != n:
        raise ValueError(f"{n} regions do not form a square grid: attention maps need clip-grid regions")
    return values.detach().float().cpu().numpy().reshape(side, side)


@torch.inference_mode()
def attention_maps(model: USERModel, image: Image.Image) -> AttentionMaps:
    if model.config.region_extractor != "clip-grid":
        raise ValueError("attention maps need a clip-grid checkpoint (regions laid out as an image grid)")
    if model.config.enhancement == "none":
        raise ValueError("this checkpoint has no semantic enhancement to show")
    encoding = model.encode_regions_detailed(model.extract_regions([image]))
    enhancement = to_grid(encoding.enhance_attention[0])
    guide = None if encoding.region_weights is None else to_grid(encoding.region_weights[0])
    return AttentionMaps(overlay(image, enhancement), None if guide is None else overlay(image, guide), enhancement, guide)
