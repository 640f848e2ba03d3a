"""USER's semantic enhancement: a global guide g enhances every region feature.

Two ways to get the guide (paper, Sec. III):
  SGE, self-guided: g is learned from the regions themselves by attention (module ``v_sa`` in the
    authors' release).
  CGE, CLIP-guided: g comes from a frozen CLIP image embedding. The release has no CGE code; following
    the paper, we project the CLIP embedding to the region space with a learned Linear(clip_dim, D) and
    L2-normalise it, in place of the self-guided g. Everything after the guide is shared.

Enhancement (both): a = softmax_r(λ·⟨g, v_r⟩), a ← a / ‖a‖₂ over regions, v'_r = v_r + a_r·g.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .layers import MASKED_SCORE, l2norm


def init_linear_(layer: nn.Linear) -> None:
    """Xavier-uniform (±√(6/(in+out))) weights and zero bias, the release's init for these layers."""
    bound = math.sqrt(6.0) / math.sqrt(layer.in_features + layer.out_features)
    nn.init.uniform_(layer.weight, -bound, bound)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class Dropout(nn.Dropout):
    """nn.Dropout with its keep-mask drawn by ``torch.rand`` (the same distribution; on CPU about twice as
    fast as the ``bernoulli_`` nn.Dropout uses, which was 8% of a training step)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand_like(x) >= self.p
        return x * keep * (1.0 / (1.0 - self.p))


def enhance_regions(
    regions: torch.Tensor, guide: torch.Tensor, mask: torch.Tensor, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """regions [B, R, D], guide g [B, D], mask [B, R] -> enhanced regions [B, R, D], attention a [B, R]."""
    logits = scale * torch.einsum("brd,bd->br", regions, guide)
    attention = torch.softmax(logits.masked_fill(~mask, MASKED_SCORE), dim=1)
    attention = l2norm(attention, dim=1)
    return regions + attention.unsqueeze(-1) * guide.unsqueeze(1), attention


class SelfGuidedEnhancement(nn.Module):
    """SGE guide: attention over regions, conditioned on their mean.

    local_r = Dropout(Tanh(BN_R(W_l v_r)))  — BatchNorm1d over the region axis, as in the release
    glob    = Dropout(Tanh(BN_D(W_g mean_r v_r)))
    w       = softmax_r(W_c (local_r ⊙ glob))
    g       = L2norm(Σ_r w_r v_r)
    """

    def __init__(self, region_dim: int, num_regions: int, dropout: float = 0.4):
        super().__init__()
        self.embedding_local = nn.Sequential(
            nn.Linear(region_dim, region_dim), nn.BatchNorm1d(num_regions), nn.Tanh(), Dropout(dropout)
        )
        self.embedding_global = nn.Sequential(
            nn.Linear(region_dim, region_dim), nn.BatchNorm1d(region_dim), nn.Tanh(), Dropout(dropout)
        )
        self.embedding_common = nn.Sequential(nn.Linear(region_dim, 1))
        for branch in (self.embedding_local, self.embedding_global, self.embedding_common):
            init_linear_(branch[0])

    def forward(self, regions: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """regions [B, R, D], mask [B, R] -> guide g [B, D], region weights w [B, R]."""
        valid = mask.unsqueeze(-1).to(regions.dtype)
        mean = (regions * valid).sum(1) / valid.sum(1).clamp_min(1)  # [B, D]
        local = self.embedding_local(regions)  # [B, R, D]
        glob = self.embedding_global(mean).unsqueeze(1)  # [B, 1, D]
        scores = self.embedding_common(local * glob).squeeze(-1)  # [B, R]
        weights = torch.softmax(scores.masked_fill(~mask, MASKED_SCORE), dim=1)
        guide = l2norm((weights.unsqueeze(-1) * regions).sum(1), dim=-1)
        return guide, weights


class ClipGuidedEnhancement(nn.Module):
    """CGE guide: g = L2norm(W · clip_embedding), with W a learned Linear(clip_dim, D).

    The paper does not say how the CLIP guide is scaled. Measured on the embedded default: a learned
    scale s·L2norm(W·c) (s initialised to √D, the regions' scale) starts faster (val rsum 436 vs 345
    after one epoch) but ends lower (504 vs 528 after 4 epochs at m = 0.999): the guide stays a unit vector.
    """

    def __init__(self, clip_dim: int, region_dim: int):
        super().__init__()
        self.proj = nn.Linear(clip_dim, region_dim)
        init_linear_(self.proj)

    def forward(self, clip_embeds: torch.Tensor) -> torch.Tensor:
        """clip_embeds [B, clip_dim] -> guide g [B, D]."""
        return l2norm(self.proj(clip_embeds), dim=-1)
