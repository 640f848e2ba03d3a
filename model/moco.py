"""Momentum Contrast for USER (He et al., CVPR 2020, adapted to two modalities).

Key towers are momentum copies of both query towers; two queues hold recent key embeddings, of
images and of captions, as extra negatives for the UTO queue term. Queues and key towers are
training state: the published checkpoint is the query model alone.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn as nn

from .loss import UTO
from .user import USERModel


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along dim 0; returns it unchanged when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


class MomentumUSER(nn.Module):
    """USER under MoCo and UTO.

    queue_size (K): keys kept per modality (2048 for Flickr30K, 4096 for COCO).
    momentum (m): key towers follow θ_k ← m·θ_k + (1 − m)·θ_q (0.999).
    lambda_loss (λ_loss): weight of the mini-batch UTO term (20 Flickr30K, 1 COCO); the queue term is unweighted.
    use_queue: False trains with the mini-batch term alone (the ablation without MoCo).
    """

    def __init__(
        self,
        model: USERModel,
        queue_size: int = 2048,
        momentum: float = 0.999,
        uto: UTO | None = None,
        lambda_loss: float = 20.0,
        use_queue: bool = True,
    ):
        super().__init__()
        self.query = model
        self.key = copy.deepcopy(model).requires_grad_(False)
        self.uto = uto or UTO()
        self.momentum = momentum
        self.lambda_loss = lambda_loss
        self.use_queue = use_queue
        embed_dim = model.config.embed_dim
        self.register_buffer("image_queue", nn.functional.normalize(torch.randn(embed_dim, queue_size), dim=0))
        self.register_buffer("text_queue", nn.functional.normalize(torch.randn(embed_dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        """θ_k ← m·θ_k + (1 − m)·θ_q for the trained parameters; frozen ones are equal and stay so."""
        for param_q, param_k in zip(self.query.parameters(), self.key.parameters()):
            if param_q.requires_grad:
                param_k.mul_(self.momentum).add_(param_q.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, image_keys: torch.Tensor, text_keys: torch.Tensor) -> None:
        """Write the (all-process) keys [N, E] over the oldest queue columns."""
        image_keys, text_keys = concat_all_gather(image_keys), concat_all_gather(text_keys)
        queue_size = self.image_queue.size(1)
        columns = (self.queue_ptr + torch.arange(image_keys.size(0), device=image_keys.device)) % queue_size
        self.image_queue[:, columns] = image_keys.t()
        self.text_queue[:, columns] = text_keys.t()
        self.queue_ptr[0] = (self.queue_ptr[0] + image_keys.size(0)) % queue_size

    def forward(self, regions, region_lengths, input_ids, text_lengths, clip_embeds=None, text_hidden=None):
        """One step's loss and its parts (detached, for logging)."""
        inputs = (regions, region_lengths, input_ids, text_lengths, clip_embeds, text_hidden)
        v_q, t_q = self.query(*inputs)  # [B, E] each
        batch_loss = self.uto(v_q, t_q)
        loss = self.lambda_loss * batch_loss
        parts = {"batch": batch_loss.detach()}
        if self.use_queue:
            with torch.no_grad():
                self.momentum_update()
                v_k, t_k = self.key(*inputs)
            # clone: the queues are updated in place below, after autograd has saved them
            queue_loss = self.uto.queue(v_q, t_k, t_q, v_k, self.image_queue.clone(), self.text_queue.clone())
            loss = loss + queue_loss
            parts["queue"] = queue_loss.detach()
            self.enqueue(v_k, t_k)
        return loss, parts
