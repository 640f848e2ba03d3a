"""UTO, the Unified Training Objective of USER: a mini-batch term and a MoCo queue term.

Both use the same soft hard-negative form: log(1 + Σ exp(μ(s_neg − γ)))/μ − log(1 + relu(s_pos)),
a smooth maximum over negatives above the margin γ, minus a reward for the positive similarity.
log(1 + Σ_k exp(x_k)) is computed as softplus(logsumexp(x)), which is exact and cannot overflow.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _log1p_sum_exp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """log(1 + Σ_dim exp(x)), stably."""
    return F.softplus(torch.logsumexp(x, dim=dim))


class UTO(nn.Module):
    """mu (μ): sharpness of the smooth maximum over negatives (90). gamma (γ): the margin (0.5)."""

    def __init__(self, mu: float = 90.0, gamma: float = 0.5):
        super().__init__()
        self.mu = mu
        self.gamma = gamma

    def forward(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """Mini-batch term (unscaled; the trainer applies λ_loss). img, txt: [B, E], row i a positive pair."""
        sims = img @ txt.t()  # S: [B, B], image x text
        positives = sims.diagonal()
        off_diagonal = sims - torch.diag(positives)  # S with its diagonal set to 0
        logits = self.mu * (off_diagonal - self.gamma)  # log S'
        image_anchor = _log1p_sum_exp(logits, dim=0) / self.mu  # Σ_j S'_ji: texts' negatives (column i)
        text_anchor = _log1p_sum_exp(logits, dim=1) / self.mu  # Σ_j S'_ij: images' negatives (row i)
        return (image_anchor + text_anchor - torch.log1p(F.relu(positives))).mean()

    def queue(
        self,
        v_q: torch.Tensor,
        t_k: torch.Tensor,
        t_q: torch.Tensor,
        v_k: torch.Tensor,
        v_queue: torch.Tensor,
        t_queue: torch.Tensor,
    ) -> torch.Tensor:
        """Queue term: image queries vs the text queue, text queries vs the image queue.

        v_q, t_q: query embeddings [B, E]; v_k, t_k: momentum-key embeddings [B, E];
        v_queue, t_queue: queued keys [E, K].
        """
        return self._queue_side(v_q, t_k, t_queue) + self._queue_side(t_q, v_k, v_queue)

    def _queue_side(self, query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        positives = (query * key).sum(dim=1)  # [B]
        negatives = query @ queue  # [B, K]
        hard = _log1p_sum_exp(self.mu * (negatives - self.gamma), dim=1) / self.mu
        return (hard - torch.log1p(F.relu(positives))).mean()
