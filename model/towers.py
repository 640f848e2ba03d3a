"""The two towers of USER. Module names match the authors' release, so official weights load key for key.

Image tower (``img_enc``): regions → [SGE | CGE] enhancement → fc(v') + MLP(v') → GPO → L2norm.
Text tower (``txt_enc``): BERT-family encoder → Linear(H, E) → GPO over tokens → L2norm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
from transformers import AutoConfig, AutoModel

from .config import USERConfig
from .enhancement import ClipGuidedEnhancement, SelfGuidedEnhancement, enhance_regions, init_linear_
from .layers import GPO, MLP, l2norm, length_mask


@dataclass
class ImageEncoding:
    """What the image tower computed; the attention maps are what the demo visualises."""

    embedding: torch.Tensor  # [B, E], L2-normalised
    enhance_attention: Optional[torch.Tensor]  # [B, R], a (None without enhancement)
    region_weights: Optional[torch.Tensor]  # [B, R], SGE's guide weights w (None for CGE / none)
    pool_weights: torch.Tensor  # [B, R, 1], GPO's θ


class ImageEncoder(nn.Module):
    def __init__(self, config: USERConfig):
        super().__init__()
        d, e = config.region_dim, config.embed_dim
        self.enhancement = config.enhancement
        self.enhance_scale = config.enhance_scale
        self.fc = nn.Linear(d, e)
        init_linear_(self.fc)
        self.mlp = MLP(d, e // 2, e)
        self.gpool = GPO(config.gpo_pe_dim, config.gpo_hidden)
        if config.enhancement == "sge":
            self.v_sa = SelfGuidedEnhancement(d, config.num_regions, config.dropout)
        elif config.enhancement == "cge":
            self.cge = ClipGuidedEnhancement(config.clip_dim, d)

    def encode(
        self, regions: torch.Tensor, lengths: torch.Tensor, clip_embeds: Optional[torch.Tensor] = None
    ) -> ImageEncoding:
        """regions [B, R, D], lengths [B], clip_embeds [B, clip_dim] (CGE only) -> ImageEncoding."""
        lengths = lengths.to(regions.device).long()
        mask = length_mask(lengths, regions.size(1))  # [B, R]
        attention = region_weights = None
        if self.enhancement == "sge":
            guide, region_weights = self.v_sa(regions, mask)
            regions, attention = enhance_regions(regions, guide, mask, self.enhance_scale)
        elif self.enhancement == "cge":
            if clip_embeds is None:
                raise ValueError("a CGE model needs the CLIP image embeddings of its images (clip_embeds)")
            guide = self.cge(clip_embeds.to(regions.dtype))
            regions, attention = enhance_regions(regions, guide, mask, self.enhance_scale)
        features = self.fc(regions) + self.mlp(regions)  # [B, R, E]
        pooled, pool_weights = self.gpool(features, lengths)
        return ImageEncoding(l2norm(pooled, dim=-1), attention, region_weights, pool_weights)

    def forward(
        self, regions: torch.Tensor, lengths: torch.Tensor, clip_embeds: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        return self.encode(regions, lengths, clip_embeds).embedding


def build_text_backbone(config: USERConfig) -> nn.Module:
    """A randomly initialised backbone from the stored ``text_config`` (no download); weights come later."""
    if not config.text_config:
        raise ValueError(
            "USERConfig.text_config is empty: fill it with the backbone's transformers config, e.g. "
            "USERConfig.for_text_backbone(...) or model.backbones.text_config_of(path)"
        )
    values = dict(config.text_config)
    model_type = values.pop("model_type")
    backbone_config = AutoConfig.for_model(model_type, **values)
    return AutoModel.from_config(backbone_config)


class TextEncoder(nn.Module):
    def __init__(self, config: USERConfig):
        super().__init__()
        self.bert = build_text_backbone(config)
        if getattr(self.bert, "pooler", None) is not None:
            # Kept so official checkpoints load key for key; USER pools with GPO, never with [CLS].
            self.bert.pooler.requires_grad_(False)
        self.linear = nn.Linear(self.bert.config.hidden_size, config.embed_dim)
        self.gpool = GPO(config.gpo_pe_dim, config.gpo_hidden)

    def backbone(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, L] (pad id 0) -> the backbone's last hidden states [B, L, H]."""
        return self.bert(input_ids=input_ids, attention_mask=(input_ids != 0).long()).last_hidden_state

    def forward(
        self, input_ids: torch.Tensor, lengths: torch.Tensor, hidden: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """input_ids [B, L] (pad id 0), lengths [B] -> [B, E], L2-normalised.

        ``hidden`` [B, L, H]: the backbone's output computed beforehand (a frozen backbone's output only
        depends on the ids, so training may cache it).
        """
        hidden = self.backbone(input_ids) if hidden is None else hidden.to(self.linear.weight.dtype)
        features = self.linear(hidden)  # [B, L, E]
        pooled, _ = self.gpool(features, lengths.to(features.device))
        return l2norm(pooled, dim=-1)
