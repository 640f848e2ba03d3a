"""The paper's efficiency claim, reproduced in kind: all-pairs scoring with USER (one embedding per image
and per caption, then one matrix product) vs a SCAN-style cross-attention matcher, which must attend
every caption's words over every image's regions.

SCAN (Lee et al., ECCV 2018), text-to-image, average pooling, written for this benchmark only:
  s_jr = LeakyReLU_0.1(cos(w_j, v_r)), normalised over the words j;
  α_jr = softmax_r(λ s_jr);  a_j = Σ_r α_jr v_r;  S(I, T) = mean_j cos(w_j, a_j).
Both start from the same backbone outputs (CLIP patch tokens, the text backbone's hidden states) and
the matcher uses USER's own projections (fc + MLP for regions, linear for words), so the difference is
the scoring alone: per pair for SCAN, per item for USER.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

SCAN_LAMBDA = 9.0


def scan_pair(regions: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """One pair, written as the formula reads: regions [R, E], words [L, E] (both unit rows) -> score."""
    s = F.leaky_relu(words @ regions.t(), 0.1)  # [L, R]
    s = s / (s.norm(dim=0, keepdim=True) + 1e-8)
    attended = torch.softmax(SCAN_LAMBDA * s, dim=1) @ regions  # [L, E]
    return F.cosine_similarity(words, attended, dim=1).mean()


def scan_scores(regions: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """All pairs, batched: regions [N, R, E], words [M, L, E] (unit rows), word_mask [M, L] -> [N, M]."""
    scores = torch.empty(regions.size(0), words.size(0))
    for start in range(0, words.size(0), chunk):
        w, mask = words[start : start + chunk], word_mask[start : start + chunk]  # [C, L, E], [C, L]
        s = F.leaky_relu(torch.einsum("nre,cle->nclr", regions, w), 0.1)  # [N, C, L, R]
        s = s.masked_fill(~mask[None, :, :, None], 0.0)
        s = s / (s.norm(dim=2, keepdim=True) + 1e-8)
        attended = torch.einsum("nclr,nre->ncle", torch.softmax(SCAN_LAMBDA * s, dim=3), regions)
        cosine = F.cosine_similarity(w.unsqueeze(0), attended, dim=3)  # [N, C, L]
        scores[:, start : start + chunk] = (cosine * mask).sum(2) / mask.sum(1)
    return scores


def projected_features(model, regions: torch.Tensor, hidden: torch.Tensor, lengths: torch.Tensor):
    """USER's projections without its pooling: unit region features [N, R, E], word features [M, L, E], mask."""
    img = model.img_enc
    region_features = F.normalize(img.fc(regions) + img.mlp(regions), dim=-1)
    words = F.normalize(model.txt_enc.linear(hidden), dim=-1)
    mask = torch.arange(hidden.size(1))[None, :] < lengths[:, None]
    return region_features, words, mask


def user_scores(model, regions: torch.Tensor, clip_embeds, hidden: torch.Tensor, lengths: torch.Tensor,
                batch: int = 256) -> torch.Tensor:
    """USER's all-pairs scores: embed every image and caption once, then one product -> [N, M]."""
    region_lengths = torch.full((regions.size(0),), regions.size(1), dtype=torch.long)
    images = []
    for start in range(0, regions.size(0), batch):
        guide = None if clip_embeds is None else clip_embeds[start : start + batch]
        images.append(model.img_enc(regions[start : start + batch], region_lengths[start : start + batch], guide))
    captions = [model.txt_enc(None, lengths[s : s + batch], hidden[s : s + batch]) for s in range(0, len(hidden), batch)]
    return torch.cat(images) @ torch.cat(captions).t()


@torch.inference_mode()
def compare(model, regions: torch.Tensor, clip_embeds, hidden: torch.Tensor, lengths: torch.Tensor) -> dict:
    """Time both on the same inputs: regions [N, R, D] (+ clip_embeds [N, C]), hidden [M, L, H], lengths [M]."""
    started = time.perf_counter()
    user = user_scores(model, regions, clip_embeds, hidden, lengths)
    user_s = time.perf_counter() - started
    started = time.perf_counter()
    scan = scan_scores(*projected_features(model, regions, hidden, lengths))
    scan_s = time.perf_counter() - started
    assert user.shape == scan.shape
    return {"images": regions.size(0), "captions": hidden.size(0), "user_s": round(user_s, 3),
            "cross_attention_s": round(scan_s, 3), "ratio": round(scan_s / user_s, 1)}
