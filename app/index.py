"""Nearest-neighbour search over L2-normalised embeddings: exact by default, FAISS for large galleries."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

# Above this many vectors the service switches from the exact product to a FAISS HNSW index: on 2 CPU
# cores the exact product costs about 0.12 ms per 1,000 vectors of 256 dims per query (≈ 25 ms at 200k),
# HNSW well under 1 ms at a million (``python -m benchmarks.run``: the search-scaling table).
FAISS_THRESHOLD = 200_000
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 16, 64, 256


class EmbeddingIndex:
    """Top-k inner-product search. ``kind``: ``exact`` (one matrix product + top-k, torch) or
    ``faiss-flat`` / ``faiss-hnsw`` (FAISS; HNSW is approximate)."""

    def __init__(self, vectors: torch.Tensor, kind: Optional[str] = None):
        self.vectors = vectors.float().contiguous()  # [N, E]
        self.kind = kind or ("faiss-hnsw" if len(vectors) > FAISS_THRESHOLD else "exact")
        self._faiss = None
        if self.kind.startswith("faiss"):
            self._faiss = self._build_faiss(self.vectors.cpu().numpy())
        elif self.kind != "exact":
            raise ValueError(f"unknown index kind {self.kind!r}: exact, faiss-flat or faiss-hnsw")

    def _build_faiss(self, vectors: np.ndarray):
        import faiss

        dim = vectors.shape[1]
        if self.kind == "faiss-flat":
            index = faiss.IndexFlatIP(dim)
        else:
            index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index.hnsw.efSearch = HNSW_EF_SEARCH
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return index

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """queries [Q, E] -> scores [Q, k'], indices [Q, k'] with k' = min(k, N), best first."""
        k = max(0, min(int(k), len(self)))
        queries = queries.float()
        if self._faiss is not None:
            scores, indices = self._faiss.search(np.ascontiguousarray(queries.cpu().numpy()), k)
            return torch.from_numpy(scores), torch.from_numpy(indices).long()
        scores = queries.to(self.vectors.device) @ self.vectors.t()  # [Q, N]
        top = scores.topk(k, dim=1)
        return top.values.cpu(), top.indices.cpu()
