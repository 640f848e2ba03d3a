"""Building blocks shared by both towers: L2 normalisation, the two-layer MLP, and GPO.

GPO (Generalized Pooling Operator) is from VSE∞ (Chen et al., CVPR 2021), which USER builds on: it
learns, per position in the *sorted* feature list, how much that position contributes, so it can
behave like max-, mean- or top-k pooling as the data asks.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

# Score given to padded positions before the softmax; the release uses -10000 too.
MASKED_SCORE = -10000.0


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """x / (‖x‖₂ + eps), exactly as in the release (eps added to the norm, not inside the sqrt)."""
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + eps)


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B] lengths -> [B, max_len] bool, True at valid positions."""
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


def positional_encoding_1d(d_model: int, length: int) -> torch.Tensor:
    """Sinusoidal position encodings [length, d_model] (Vaswani et al.)."""
    position = torch.arange(length, dtype=torch.float).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float) * -(math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


def sort_descending(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Values of x sorted in descending order along dim. At inference on CPU this goes through NumPy,
    whose sort of many short rows (GPO sorts 36 regions x E dims per image) is about 2x faster than
    torch's on 2 cores; the result is the same."""
    if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32:
        return x.sort(dim=dim, descending=True)[0]
    return torch.from_numpy(np.negative(np.sort(np.negative(x.numpy()), axis=dim)))


class MLP(nn.Module):
    """Linear(D, E/2) → BatchNorm1d → ReLU → Linear(E/2, E), applied to every row of [B, N, D].

    The release builds one BatchNorm per layer (``bns.0`` of size E/2 and ``bns.1`` of size E) but its
    forward never applies the last one; it is kept so that official checkpoints load key for key.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int):
        super().__init__()
        self.output_dim = output_dim
        self.layers = nn.ModuleList([nn.Linear(input_dim, hidden_dim), nn.Linear(hidden_dim, output_dim)])
        self.bns = nn.ModuleList([nn.BatchNorm1d(hidden_dim), nn.BatchNorm1d(output_dim)])
        self.bns[1].requires_grad_(False)  # never applied: no gradient (DDP would wait for one)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n, dim = x.shape
        x = x.reshape(batch * n, dim)  # BatchNorm over all B·N rows
        x = F.relu(self.bns[0](self.layers[0](x)))
        x = self.layers[1](x)
        return x.view(batch, n, self.output_dim)


class GPO(nn.Module):
    """Generalized pooling: Σ_k θ_k · sort↓(features)_k with θ predicted from the positions alone.

    θ = softmax_k(w · BiGRU(PE(k)) / 0.1) over the valid positions k = 0..len-1, where the two GRU
    directions are averaged. Features are sorted in descending order per dimension, padding excluded.
    """

    temperature = 0.1

    def __init__(self, pe_dim: int = 32, hidden: int = 32):
        super().__init__()
        self.pe_dim = pe_dim
        self.gru = nn.GRU(pe_dim, hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.linear = nn.Linear(hidden, 1, bias=False)
        self._table: Optional[tuple] = None  # (parameter key, θ for lengths 1..Lmax) at inference

    def pool_weights(self, lengths: torch.Tensor) -> torch.Tensor:
        """[B] lengths -> [B, max_len, 1] pooling weights θ (zero at padding).

        θ depends on the length alone, so the GRU runs once per distinct length (one run for a batch of
        36-region images) and the rows are gathered back: the same numbers, far less sequential work.
        At inference (eval mode, no gradient) θ is looked up in a table of every length seen so far,
        rebuilt whenever a parameter changes: a single query then costs no GRU step at all.
        """
        if self.training or torch.is_grad_enabled():
            return self._compute_weights(lengths)
        max_len = int(lengths.max())
        key = (lengths.device, tuple((p.data_ptr(), p._version) for p in self.parameters()))
        table = self._table
        if table is None or table[0] != key or table[1].size(0) < max_len:
            all_lengths = torch.arange(1, max(max_len, 0 if table is None else table[1].size(0)) + 1, device=lengths.device)
            table = self._table = (key, self._compute_weights(all_lengths))  # [Lmax, Lmax, 1]
        return table[1][lengths - 1, :max_len]

    def _compute_weights(self, lengths: torch.Tensor) -> torch.Tensor:
        unique, inverse = torch.unique(lengths, return_inverse=True)  # unique is sorted ascending
        max_len = int(unique[-1])
        mask = length_mask(unique, max_len).unsqueeze(-1)  # [U, L, 1]
        pes = positional_encoding_1d(self.pe_dim, max_len).to(lengths.device)
        pes = pes.unsqueeze(0).expand(len(unique), -1, -1).masked_fill(~mask, 0)
        packed = pack_padded_sequence(pes, unique.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=max_len)  # [U, L, 2H]
        half = out.size(2) // 2
        out = (out[:, :, :half] + out[:, :, half:]) / 2
        scores = self.linear(out).masked_fill(~mask, MASKED_SCORE)  # [U, L, 1]
        return torch.softmax(scores / self.temperature, dim=1)[inverse]  # [B, L, 1]

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features [B, N, E], lengths [B] -> pooled [B, E], weights [B, max_len, 1]."""
        lengths = lengths.to(features.device).long()
        weights = self.pool_weights(lengths).to(features.dtype)  # [B, L, 1]
        max_len = weights.size(1)
        # Positions last and contiguous: sorting along the last axis, then one batched product with θ, beats
        # sorting along dim 1 and a broadcast multiply-sum (128 x 36 x 256, forward + backward, one thread:
        # 109 vs 129 ms), the largest part of a training step after the linear layers.
        features = features[:, :max_len, :].transpose(1, 2).contiguous()  # [B, E, L]
        mask = length_mask(lengths, max_len).unsqueeze(1)  # [B, 1, L]
        padded = not bool(mask.all())  # images: every region is valid, no masking to do
        if padded:
            features = features.masked_fill(~mask, MASKED_SCORE)
        sorted_features = sort_descending(features, dim=-1)  # per dimension, over positions
        if padded:
            sorted_features = sorted_features.masked_fill(~mask, 0)
        return (sorted_features @ weights).squeeze(-1), weights  # [B, E]
