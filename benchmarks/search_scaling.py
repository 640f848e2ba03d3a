"""Search scaling: exact top-k (torch) vs FAISS flat, IVF and HNSW on N unit vectors.

The vectors are drawn around ``clusters`` random centres (a gallery of photos is clustered too: uniformly
random unit vectors in 256+ dimensions have no neighbours worth finding, and every index fails on them);
the queries come from the same mixture but are not in the index. Recall@10 is measured against the exact
top 10 of the same vectors.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from app.index import HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, HNSW_M

from .timing import rss_bytes, time_calls

K = 10


@dataclass
class ScalingRow:
    n: int
    dim: int
    index: str
    build_s: float
    p50_ms: float
    p95_ms: float
    recall_at_10: float
    memory_mb: float
    params: str = ""


def clustered_unit_vectors(n: int, dim: int, clusters: int, seed: int, spread: float = 0.6) -> np.ndarray:
    """[n, dim] float32, L2-normalised, around ``clusters`` shared centres (same seed → same centres)."""
    centres = np.random.default_rng(1234 + dim).standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):  # chunked: 1M x 1024 floats is 4 GB already
        stop = min(n, start + 65536)
        noise = rng.standard_normal((stop - start, dim)).astype(np.float32) * (spread / math.sqrt(dim))
        rows = centres[rng.integers(0, clusters, stop - start)] + noise
        out[start:stop] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def exact_top_k(vectors: torch.Tensor, queries: torch.Tensor, k: int = K) -> np.ndarray:
    return torch.cat([(q @ vectors.t()).topk(k, dim=1).indices for q in queries.split(64)]).numpy()


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def build_faiss(kind: str, vectors: np.ndarray):
    import faiss

    n, dim = vectors.shape
    if kind == "faiss-flat":
        index, params = faiss.IndexFlatIP(dim), ""
    elif kind == "faiss-ivf":
        nlist = int(4 * math.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors[np.random.default_rng(0).permutation(n)[: min(n, 64 * nlist)]])
        index.nprobe = max(8, nlist // 16)
        params = f"nlist={nlist} nprobe={index.nprobe}"
    elif kind == "faiss-hnsw":  # the app's own settings
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction, index.hnsw.efSearch = HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH
        params = f"M={HNSW_M} efConstruction={HNSW_EF_CONSTRUCTION} efSearch={HNSW_EF_SEARCH}"
    else:
        raise ValueError(kind)
    index.add(vectors)
    return index, params


def bench_one(kind: str, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> ScalingRow:
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    if kind == "exact":
        tensor, params = torch.from_numpy(vectors), "torch matmul + topk, float32"
        search = lambda q: (q @ tensor.t()).topk(K, dim=1).indices.numpy()  # noqa: E731
        query_items = [torch.from_numpy(q[None]) for q in queries]
        memory = vectors.nbytes
    else:
        index, params = build_faiss(kind, vectors)
        search = lambda q: index.search(q, K)[1]  # noqa: E731
        query_items = [np.ascontiguousarray(q[None]) for q in queries]
        memory = max(rss_bytes() - before, 0)
    build = time.perf_counter() - started
    timing = time_calls(search, query_items, warmup=5)
    found = np.concatenate([search(q) for q in query_items])
    n, dim = vectors.shape
    return ScalingRow(n, dim, kind, round(build, 2), round(timing.p50_ms, 3), round(timing.p95_ms, 3),
                      round(recall(found, truth), 4), round(memory / 2**20, 1), params)


def run(sizes=(10_000, 100_000, 1_000_000), dims=(256, 1024), n_queries: int = 100, hnsw_limit: int = 1_000_000,
        log=print) -> list[ScalingRow]:
    rows = []
    for dim in dims:
        for n in sizes:
            vectors = clustered_unit_vectors(n, dim, clusters=max(16, n // 500), seed=n)
            queries = clustered_unit_vectors(n_queries, dim, clusters=max(16, n // 500), seed=10**9 + n)
            truth = exact_top_k(torch.from_numpy(vectors), torch.from_numpy(queries))
            for kind in ("exact", "faiss-flat", "faiss-ivf", "faiss-hnsw"):
                if kind == "faiss-hnsw" and n * dim > hnsw_limit * 256:
                    continue  # building it on 2 cores takes longer than the rest of the suite
                rows.append(bench_one(kind, vectors, queries, truth))
                log(f"  search N={n:>9,} E={dim:<5} {kind:<11} p50 {rows[-1].p50_ms:8.3f} ms  "
                    f"recall@10 {rows[-1].recall_at_10:.3f}  build {rows[-1].build_s:.1f} s")
                gc.collect()
            del vectors
    return rows
