"""Standard image-text retrieval evaluation: R@1/5/10, median and mean rank, rsum.

``sims`` is [N, 5N]: image i owns captions 5i..5i+4. A rank is 0-based: the number of candidates
scored strictly higher than the ground truth (ties are resolved in the ground truth's favour). An
image's i2t rank is the best rank among its captions.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

CAPTIONS_PER_IMAGE = 5


def _as_tensor(sims) -> torch.Tensor:
    return sims if isinstance(sims, torch.Tensor) else torch.from_numpy(np.asarray(sims))


def _summary(ranks: torch.Tensor) -> dict[str, float]:
    ranks = ranks.double().cpu().numpy()
    summary = {f"r{k}": 100.0 * float((ranks < k).mean()) for k in (1, 5, 10)}
    summary["medr"] = float(np.floor(np.median(ranks)) + 1)
    summary["meanr"] = float(ranks.mean() + 1)
    return summary


def i2t_ranks(sims) -> torch.Tensor:
    sims = _as_tensor(sims)
    n = sims.size(0)
    own = sims.view(n, n, CAPTIONS_PER_IMAGE)[torch.arange(n), torch.arange(n)]  # [N, 5]
    best_own = own.max(dim=1).values  # [N]
    return (sims > best_own.unsqueeze(1)).sum(dim=1)


def t2i_ranks(sims) -> torch.Tensor:
    sims = _as_tensor(sims)
    n_captions = sims.size(1)
    owner = torch.arange(n_captions) // CAPTIONS_PER_IMAGE
    own = sims[owner, torch.arange(n_captions)]  # [5N]
    return (sims > own.unsqueeze(0)).sum(dim=0)


def i2t(sims) -> dict[str, float]:
    """Image → text retrieval metrics for sims [N, 5N]."""
    return _summary(i2t_ranks(sims))


def t2i(sims) -> dict[str, float]:
    """Text → image retrieval metrics for sims [N, 5N]."""
    return _summary(t2i_ranks(sims))


def retrieval_metrics(sims) -> dict[str, float]:
    """Both directions, flattened (``i2t_r1`` ...), and rsum = the six recalls added up."""
    metrics = {f"i2t_{k}": v for k, v in i2t(sims).items()}
    metrics.update({f"t2i_{k}": v for k, v in t2i(sims).items()})
    metrics["rsum"] = sum(metrics[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return metrics


def five_fold_metrics(sims, fold_size: int = 1000) -> dict[str, float]:
    """COCO 1K protocol: the mean of the metrics on 5 disjoint folds of ``fold_size`` images."""
    sims = _as_tensor(sims)
    folds = [
        retrieval_metrics(sims[i * fold_size : (i + 1) * fold_size, i * 5 * fold_size : (i + 1) * 5 * fold_size])
        for i in range(sims.size(0) // fold_size)
    ]
    return {k: float(np.mean([f[k] for f in folds])) for k in folds[0]}


def format_table(results: Iterable[tuple[str, dict[str, float]]]) -> str:
    """A fixed-width table, one row per (name, metrics)."""
    columns = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"]
    header = f"{'':<17}" + "".join(f"{c:>9}" for c in columns)
    rows = [f"{name:<17}" + "".join(f"{m[c]:9.1f}" for c in columns) for name, m in results]
    return "\n".join([header, *rows])


@torch.no_grad()
def encode_split(model, split, batch_size: int = 128, text_features=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of a RetrievalSplit: images [N, E] and captions [5N, E], on the CPU.

    ``text_features``: the frozen text backbone's precomputed outputs for ``split.captions``
    (``model.data.TokenFeatures``), which skips the backbone.
    """
    images, captions = [], []
    for start in range(0, len(split), batch_size):
        regions = torch.tensor(np.asarray(split.regions[start : start + batch_size]), dtype=torch.float32)
        lengths = torch.full((regions.size(0),), regions.size(1), dtype=torch.long)
        clip = None
        if split.clip_embeds is not None:
            clip = torch.tensor(np.asarray(split.clip_embeds[start : start + batch_size]), dtype=torch.float32)
        images.append(model.encode_regions(regions, lengths, clip).float().cpu())
    for start in range(0, len(split.captions), batch_size):
        texts = split.captions[start : start + batch_size]
        if text_features is None:
            captions.append(model.encode_texts(texts).float().cpu())
            continue
        input_ids, lengths = model.tokenize(texts)
        hidden = torch.nn.utils.rnn.pad_sequence(
            [torch.from_numpy(text_features[start + i].astype(np.float32)) for i in range(len(texts))], batch_first=True
        )
        captions.append(model.txt_enc(input_ids.to(model.device), lengths, hidden.to(model.device)).float().cpu())
    return torch.cat(images), torch.cat(captions)


def average_similarities(sims: Sequence[torch.Tensor]) -> torch.Tensor:
    """The paper's ensemble (SGE+CGE): the mean of the models' similarity matrices, all of one shape."""
    return torch.stack(list(sims)).mean(0)


def evaluate_split(models, split, batch_size: int = 128, text_features=None) -> dict[str, float]:
    """Metrics of one model, or of an ensemble (averaged similarities) when given several."""
    models = models if isinstance(models, (list, tuple)) else [models]
    sims = []
    for model in models:
        was_training = model.training
        model.eval()
        images, captions = encode_split(model, split, batch_size, text_features)
        model.train(was_training)
        sims.append(images @ captions.t())
    return retrieval_metrics(average_similarities(sims))
