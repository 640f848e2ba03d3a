"""The retrieval service behind the demo, with no gradio import: load checkpoints, embed the gallery
once (cached on disk), and answer text → image, image → text/image and SGE-vs-CGE queries.

A newcomer's path for a text query: ``app.ui`` (textbox) → ``RetrievalService.search_text`` →
``USERModel.encode_texts`` (``model/user.py``) → ``EmbeddingIndex.search`` (``app/index.py``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
import unicodedata
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from model import USERModel
from model.evaluation import average_similarities

from .gallery import Gallery
from .index import EmbeddingIndex

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 1000  # longer text is cut here (and then to the model's token limit)
MAX_IMAGE_PIXELS = 40_000_000  # refuse decompression bombs before decoding
MAX_IMAGE_BYTES = 20 * 1024 * 1024
ENSEMBLE = "Ensemble"
MEMO_LIMIT = 20_000  # gallery images up to which backbone outputs are shared between models at start-up


class QueryError(ValueError):
    """Bad input from a user: the message is meant to be shown to them as is."""


@dataclass
class Hit:
    rank: int
    index: int  # image index, or caption index for caption hits
    score: float
    label: str  # a caption (for an image: its first caption, or its file name)
    path: Optional[Path]  # image file, when the gallery has images
    is_ground_truth: bool = False


@dataclass
class SearchResult:
    images: list[Hit]
    captions: list[Hit] = field(default_factory=list)
    note: str = ""  # e.g. "query truncated to 64 tokens"
    seconds: float = 0.0


@dataclass
class ModelIndex:
    name: str
    model: USERModel
    image_index: EmbeddingIndex
    caption_index: Optional[EmbeddingIndex]


def pick_device(requested: Optional[str] = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_fingerprint(model: USERModel) -> str:
    """Changes when the checkpoint's weights or config change."""
    digest = hashlib.sha1(repr(sorted(model.config.to_dict().items())).encode())
    source = model.source_dir
    weights = None if source is None else Path(source) / "model.safetensors"
    if weights is not None and weights.is_file():
        digest.update(hashlib.sha1(weights.read_bytes()).digest())
    else:
        for key, value in sorted(model.publishable_state_dict().items()):
            digest.update(key.encode() + value.float().numpy().tobytes())
    return digest.hexdigest()[:20]


def open_image(data) -> Image.Image:
    """A PIL image from a path, bytes or an image, checked for size, EXIF-rotated, first frame, RGB."""
    if isinstance(data, (bytes, bytearray)):
        if len(data) > MAX_IMAGE_BYTES:
            raise QueryError(f"the image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
        data = io.BytesIO(data)
    if isinstance(data, (str, os.PathLike)) and Path(data).stat().st_size > MAX_IMAGE_BYTES:
        raise QueryError(f"the image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    try:
        image = data if isinstance(data, Image.Image) else Image.open(data)
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise QueryError(f"the image is {width}x{height} pixels; the limit is {MAX_IMAGE_PIXELS // 1_000_000} megapixels")
        image.seek(0)  # animated images: the first frame
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(canvas, image)
        return image.convert("RGB")
    except QueryError:
        raise
    except Image.DecompressionBombError as err:
        raise QueryError(f"the image is too large; the limit is {MAX_IMAGE_PIXELS // 1_000_000} megapixels") from err
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as err:
        raise QueryError(f"this file could not be read as an image ({type(err).__name__}: {err})") from err


def clean_query(text) -> tuple[str, str]:
    """-> (usable text, note); raises QueryError for an empty query."""
    if not isinstance(text, str):
        raise QueryError("the query must be text")
    text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    text = " ".join(text.split())
    if not text:
        raise QueryError("type a description of the image you are looking for")
    note = ""
    if len(text) > MAX_QUERY_CHARS:
        text, note = text[:MAX_QUERY_CHARS], f"the query was cut to its first {MAX_QUERY_CHARS} characters"
    return text, note


def prefetch(fn, items: list) -> Iterator:
    """Yield fn(item) for each item, computing the next one in a background thread meanwhile."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(fn, items[0]) if items else None
        for following in items[1:] + [None]:
            result = pending.result()
            pending = pool.submit(fn, following) if following is not None else None
            yield result


def normalise_caption(text: str) -> str:
    return " ".join(text.lower().split())


def share_frozen_parts(models: list[USERModel]) -> None:
    """Models that reference the same frozen text backbone (same name, revision and weights) or the same
    CLIP region extractor get one copy of it: loaded once in memory, and run once per input when the
    gallery is embedded or the models' scores are combined."""
    for i, model in enumerate(models):
        for earlier in models[:i]:
            if earlier.region_extractor_key() == model.region_extractor_key():
                model.share_region_extractor(earlier)
                break
        if not model.config.freeze_text_backbone:
            continue
        for earlier in models[:i]:
            same_name = (earlier.config.freeze_text_backbone
                         and (earlier.config.text_backbone, earlier.config.text_backbone_revision)
                         == (model.config.text_backbone, model.config.text_backbone_revision))
            if same_name and _same_weights(earlier.txt_enc.bert, model.txt_enc.bert):
                model.txt_enc.bert = earlier.txt_enc.bert
                break


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


def parse_top_k(k, limit: int) -> int:
    try:
        value = int(float(k))
    except (TypeError, ValueError):
        raise QueryError(f"top-k must be a whole number, got {k!r}") from None
    if value < 1:
        raise QueryError("top-k must be at least 1")
    return min(value, limit)


class RetrievalService:
    """Holds the loaded models and the gallery's embeddings; every public method is thread-safe to call
    concurrently (inference only reads)."""

    def __init__(self, models: dict[str, USERModel], gallery: Gallery, cache_dir: Optional[Path] = None,
                 device: Optional[str] = None, index_kind: Optional[str] = None, batch_size: int = 64):
        if not models:
            raise ValueError("the service needs at least one model")
        self.gallery = gallery
        self.device = pick_device(device)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.batch_size = batch_size
        self.latencies: deque[tuple[str, float]] = deque(maxlen=50)
        self.build_seconds: dict[str, float] = {}
        self.indexes: dict[str, ModelIndex] = {}
        self._caption_images: dict[str, set[int]] = {}  # normalised caption -> the images it describes
        for caption, image in zip(gallery.captions, gallery.caption_image):
            self._caption_images.setdefault(normalise_caption(caption), set()).add(int(image))
        share_frozen_parts(list(models.values()))
        # Frozen-backbone outputs (CLIP regions, MiniLM states) of the gallery, kept while the models embed it
        # so that models sharing a backbone run it once; only for galleries small enough to hold them.
        self._memo: Optional[dict] = {} if len(gallery) <= MEMO_LIMIT else None
        for name, model in models.items():
            model = model.to(self.device).eval()
            started = time.time()
            images, captions = self._gallery_embeddings(model)
            caption_index = EmbeddingIndex(captions, index_kind) if len(captions) else None
            self.indexes[name] = ModelIndex(name, model, EmbeddingIndex(images, index_kind), caption_index)
            self.build_seconds[name] = time.time() - started
        self._memo = None

    # ------------------------------------------------------------------------------- gallery
    @property
    def model_choices(self) -> list[str]:
        names = list(self.indexes)
        return names + [ENSEMBLE] if len(names) > 1 else names

    def can_encode_images(self, name: str) -> bool:
        models = self._models_for(name)
        return all(m.model.config.region_extractor != "precomputed" for m in models)

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _cache_file(self, model: USERModel) -> Optional[Path]:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"emb-{model_fingerprint(model)}-{self.gallery.fingerprint()}.safetensors"

    def _gallery_embeddings(self, model: USERModel) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self._cache_file(model)
        if cache is not None and cache.is_file():
            try:
                stored = load_file(str(cache))
                images, captions = stored["images"], stored["captions"]
                dim = model.config.embed_dim
                if images.shape == (len(self.gallery), dim) and captions.shape == (len(self.gallery.captions), dim):
                    return images.to(self.device), captions.to(self.device)
                log.warning("embedding cache %s does not match the gallery; rebuilding", cache)
            except Exception as err:  # truncated or corrupt: rebuild
                log.warning("embedding cache %s is unreadable (%s); rebuilding", cache, err)
        images, captions = self._encode_gallery(model)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".tmp{os.getpid()}")
            save_file({"images": images.cpu().contiguous(), "captions": captions.cpu().contiguous()}, str(tmp))
            os.replace(tmp, cache)  # atomic: a concurrent reader sees the old file or the new one
        return images, captions

    @torch.inference_mode()
    def _encode_gallery(self, model: USERModel) -> tuple[torch.Tensor, torch.Tensor]:
        gallery, size = self.gallery, self.batch_size
        image_chunks = []
        with self._autocast():
            if gallery.precomputed_split is not None:
                regions = np.load(gallery.root / f"{gallery.precomputed_split}_ims.npy", mmap_mode="r")
                for start in tqdm(range(0, len(gallery), size), desc="gallery images", unit="batch"):
                    batch = torch.tensor(np.asarray(regions[start : start + size]), dtype=torch.float32)
                    lengths = torch.full((len(batch),), batch.size(1), dtype=torch.long)
                    image_chunks.append(model.encode_regions(batch, lengths).float())
            else:
                image_chunks.append(self.encode_image_files(model, gallery.image_paths, memo=self._memo))
            caption_chunks = [self._encode_texts(model, gallery.captions[s : s + 256], memo=self._memo)
                              for s in tqdm(range(0, len(gallery.captions), 256), desc="gallery captions", unit="batch")]
        dim = model.config.embed_dim
        images = torch.cat(image_chunks) if image_chunks else torch.empty(0, dim, device=self.device)
        captions = torch.cat(caption_chunks) if caption_chunks else torch.empty(0, dim, device=self.device)
        return images, captions

    @torch.inference_mode()
    def encode_image_files(self, model: USERModel, paths: list[Path], memo: Optional[dict] = None) -> torch.Tensor:
        """Image files -> [N, E]: decode, preprocess, CLIP, USER's image tower, in batches. The regions
        are looked up in / stored into ``memo`` (models sharing a CLIP extract them once)."""
        batches = [paths[start : start + self.batch_size] for start in range(0, len(paths), self.batch_size)]
        extractor, known = model.region_extractor, memo if memo is not None else {}
        keys = [(model.region_extractor_key(), tuple(batch)) for batch in batches]
        todo = [batch for batch, key in zip(batches, keys) if key not in known]
        # Decoding and preprocessing (PIL, which releases the GIL) of the next batch overlaps the model's work.
        pixels = prefetch(lambda batch: extractor.pixels([open_image(p) for p in batch]), todo)
        chunks = []
        with self._autocast():
            for batch, key in tqdm(list(zip(batches, keys)), desc="gallery images", unit="batch", disable=len(batches) <= 1):
                regions = known.get(key)
                if regions is None:
                    regions = extractor.from_pixels(next(pixels))
                    if memo is not None:
                        memo[key] = regions
                chunks.append(model.encode_regions(regions.features, regions.lengths, regions.clip_embeds).float())
        return torch.cat(chunks) if chunks else torch.empty(0, model.config.embed_dim, device=self.device)

    @staticmethod
    def _encode_texts(model: USERModel, texts: list[str], memo: Optional[dict] = None) -> torch.Tensor:
        """texts -> [B, E]. A frozen backbone's hidden states are looked up in / stored into ``memo``, so
        models sharing one backbone (SGE and CGE of the bundle) run it once per text."""
        input_ids, lengths = model.tokenize(texts)
        input_ids = input_ids.to(model.device)
        hidden = None
        if memo is not None and model.config.freeze_text_backbone:
            key = (id(model.txt_enc.bert), tuple(texts), model.config.max_text_length)
            hidden = memo.get(key)
            if hidden is None:
                hidden = memo[key] = model.txt_enc.backbone(input_ids)
        return model.txt_enc(input_ids, lengths, hidden).float()

    @torch.inference_mode()
    def warm_up(self) -> float:
        """Pay now what the first query of each kind would pay once: the first forward passes, and loading
        the CLIP when the gallery's embeddings came from the cache (≈ 0.1 s for a text query, 0.5 s for an
        image here). Nothing is recorded as a query, and a failure (an unreadable first gallery image) is
        logged, never raised: the app is serving already. -> seconds taken."""
        started = time.perf_counter()
        try:
            for entry in self.indexes.values():
                entry.image_index.search(self._encode_texts(entry.model, ["a photo"]), 1)
                if self.gallery.has_images and self.can_encode_images(entry.name):
                    entry.image_index.search(self._encode_query_image([entry], self.gallery.image_paths[0])[0], 1)
        except Exception as err:  # noqa: BLE001 -- the first real query will pay what was not warmed up
            log.warning("warm-up stopped early: %s", err)
        return time.perf_counter() - started

    # -------------------------------------------------------------------------------- queries
    def _models_for(self, name: str) -> list[ModelIndex]:
        if name == ENSEMBLE and len(self.indexes) > 1:
            return list(self.indexes.values())
        if name not in self.indexes:
            raise QueryError(f"unknown model {name!r}; choose one of {', '.join(self.model_choices)}")
        return [self.indexes[name]]

    def _image_label(self, index: int) -> str:
        owned = self.gallery.captions_of(index)
        return self.gallery.captions[owned[0]] if owned else self.gallery.image_ids[index]

    def _rank(self, entries: list[ModelIndex], queries: list[torch.Tensor], k: int, captions: bool):
        """Scores averaged over the models (one model: its own scores); -> [(index, score)] best first."""
        indexes = [e.caption_index if captions else e.image_index for e in entries]
        if len(indexes) == 1:
            scores, idx = indexes[0].search(queries[0], k)
            return list(zip(idx[0].tolist(), scores[0].tolist()))
        total = average_similarities([q.float() @ ix.vectors.t() for q, ix in zip(queries, indexes)])  # [1, N]
        top = total.topk(min(k, total.size(1)), dim=1)
        return list(zip(top.indices[0].tolist(), top.values[0].tolist()))

    def _image_hits(self, ranked, ground_truth: set[int]) -> list[Hit]:
        paths = self.gallery.image_paths
        return [Hit(r + 1, i, s, self._image_label(i), paths[i] if paths else None, i in ground_truth)
                for r, (i, s) in enumerate(ranked)]

    def _caption_hits(self, ranked, ground_truth_image: Optional[int]) -> list[Hit]:
        owners = self.gallery.caption_image
        paths = self.gallery.image_paths
        return [Hit(r + 1, c, s, self.gallery.captions[c], paths[owners[c]] if paths else None,
                    ground_truth_image is not None and owners[c] == ground_truth_image)
                for r, (c, s) in enumerate(ranked)]

    def _timed(self, kind: str, started: float) -> float:
        seconds = time.perf_counter() - started
        self.latencies.append((kind, seconds))
        return seconds

    def ground_truth_of_text(self, text: str) -> set[int]:
        """The gallery images a text is a caption of (case and spacing ignored)."""
        return set(self._caption_images.get(normalise_caption(text), ()))

    @torch.inference_mode()
    def search_text(self, query, model: str, k=10, memo: Optional[dict] = None) -> SearchResult:
        """``memo``: frozen-backbone states shared between calls for the same text (``compare``)."""
        started = time.perf_counter()
        text, note = clean_query(query)
        k = parse_top_k(k, len(self.gallery))
        entries = self._models_for(model)
        memo = {} if memo is None else memo
        queries = [self._encode_texts(entry.model, [text], memo) for entry in entries]
        for entry in entries:
            limit = entry.model.config.max_text_length
            # A token covers at least one non-space character, so a short query cannot have been cut.
            could_be_cut = len(text.replace(" ", "")) + 2 > limit  # + [CLS] and [SEP]
            if not note and could_be_cut and entry.model.count_tokens(text) > limit:
                note = f"the query was cut to the model's {limit} tokens"
        hits = self._image_hits(self._rank(entries, queries, k, captions=False), self.ground_truth_of_text(text))
        return SearchResult(hits, note=note, seconds=self._timed("text", started))

    def _encode_query_image(self, entries: list[ModelIndex], image) -> list[torch.Tensor]:
        for entry in entries:
            if entry.model.config.region_extractor == "precomputed":
                raise QueryError(
                    f"{entry.name} was trained on precomputed detector features: it cannot read new images. "
                    "Pick a gallery image, or load a clip-grid checkpoint."
                )
        pil = open_image(image)
        with self._autocast():
            return [e.model.encode_images([pil]).float() for e in entries]

    @torch.inference_mode()
    def search_image(self, image=None, model: str = "SGE", k=10, gallery_index: Optional[int] = None) -> SearchResult:
        """An uploaded image (path, bytes or PIL) or a gallery image (by index) → captions and images."""
        started = time.perf_counter()
        entries = self._models_for(model)
        k = parse_top_k(k, max(len(self.gallery), len(self.gallery.captions)))
        if gallery_index is not None:
            if not 0 <= int(gallery_index) < len(self.gallery):
                raise QueryError(f"there is no gallery image {gallery_index}")
            gallery_index = int(gallery_index)
            queries = [e.image_index.vectors[gallery_index : gallery_index + 1] for e in entries]
        elif image is None:
            raise QueryError("upload an image or pick one from the gallery")
        else:
            queries = self._encode_query_image(entries, image)
        truth = {gallery_index} if gallery_index is not None else set()
        images = self._image_hits(self._rank(entries, queries, min(k, len(self.gallery)), captions=False), truth)
        captions = []
        if all(e.caption_index is not None for e in entries):
            ranked = self._rank(entries, queries, min(k, len(self.gallery.captions)), captions=True)
            captions = self._caption_hits(ranked, gallery_index)
        return SearchResult(images, captions, seconds=self._timed("image", started))

    def compare(self, text=None, image=None, k=10, gallery_index: Optional[int] = None) -> dict:
        """Every model's top-k for one query, with how much they agree. ``ground_truth_rank`` is None for a
        model that missed the ground truth, and ``has_ground_truth`` False when the query has none (a text
        that is not one of the gallery's captions, an image from outside the gallery)."""
        if text is not None and str(text).strip():
            memo: dict = {}  # the models' shared text backbone runs once for both
            results = {name: self.search_text(text, name, k, memo) for name in self.indexes}
            truth = self.ground_truth_of_text(clean_query(text)[0])
        else:
            results = {name: self.search_image(image, name, k, gallery_index) for name in self.indexes}
            truth = {int(gallery_index)} if gallery_index is not None else set()
        top = {name: [h.index for h in r.images] for name, r in results.items()}
        summary = {"results": results, "ground_truth_rank": {}, "only_in": {}, "has_ground_truth": bool(truth)}
        for name, indices in top.items():
            ranks = [r + 1 for r, i in enumerate(indices) if i in truth]
            summary["ground_truth_rank"][name] = ranks[0] if ranks else None
            others = set().union(*[set(v) for n, v in top.items() if n != name]) if len(top) > 1 else set()
            summary["only_in"][name] = [i for i in indices if i not in others]
        if len(top) > 1:
            sets = [set(v) for v in top.values()]
            shared = set.intersection(*sets)
            summary["overlap"] = len(shared) / max(len(next(iter(top.values()))), 1)
        return summary

    def about(self) -> dict:
        info = {"device": str(self.device), "gallery": {"root": str(self.gallery.root), "images": len(self.gallery),
                                                         "captions": len(self.gallery.captions)}, "models": {}}
        for name, entry in self.indexes.items():
            config = entry.model.config
            info["models"][name] = {
                "source": str(entry.model.source_dir or "in memory"),
                "enhancement": config.enhancement,
                "regions": config.region_extractor,
                "text_backbone": config.text_backbone,
                "embed_dim": config.embed_dim,
                "parameters": sum(p.numel() for p in entry.model.parameters()),
                "index": entry.image_index.kind,
                "gallery_embedding_seconds": round(self.build_seconds[name], 2),
            }
        recent = [s for _, s in self.latencies]
        if recent:
            info["recent_latency_ms"] = {"median": round(1000 * float(np.median(recent)), 1), "count": len(recent)}
        return info

    def gallery_metrics(self) -> dict[str, dict[str, float]]:
        """R@K of each model (and the ensemble) on the gallery, when every image has 5 captions."""
        from model.evaluation import retrieval_metrics

        owners = self.gallery.caption_image
        if len(owners) != 5 * len(self.gallery) or not np.array_equal(owners, np.arange(len(owners)) // 5):
            return {}
        sims = {name: (e.image_index.vectors @ e.caption_index.vectors.t()).cpu() for name, e in self.indexes.items()}
        metrics = {name: retrieval_metrics(s) for name, s in sims.items()}
        if len(sims) > 1:
            metrics[ENSEMBLE] = retrieval_metrics(average_similarities(list(sims.values())))
        return metrics


def load_service(sge: Optional[str], cge: Optional[str], gallery: Gallery, cache_dir: Optional[Path],
                 device: Optional[str] = None) -> RetrievalService:
    """Load the named checkpoints (either may be None) and embed the gallery."""
    models = {}
    for name, source in (("SGE", sge), ("CGE", cge)):
        if source:
            models[name] = USERModel.from_pretrained(source)
    if not models:
        raise ValueError("name at least one checkpoint (SGE or CGE)")
    return RetrievalService(models, gallery, cache_dir, device)
