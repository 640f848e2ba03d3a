"""In-process latencies of the retrieval service, each paired with its bare-backbone reference."""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Optional

import torch

from app.service import ENSEMBLE, RetrievalService, open_image
from model.config import USERConfig
from model.user import USERModel

from .timing import chunks, time_paired


def sample_captions(service: RetrievalService, n: int, seed: int = 0) -> list[str]:
    captions = service.gallery.captions
    return random.Random(seed).sample(captions, min(n, len(captions)))


def sample_images(service: RetrievalService, n: int, seed: int = 0) -> list:
    return random.Random(seed).sample(list(service.gallery.image_paths), min(n, len(service.gallery)))


def text_to_image(service: RetrievalService, queries: list[str], model: str = "SGE") -> dict:
    """search_text (clean, tokenize, backbone, USER head, search, hits) vs tokenize + backbone forward."""
    user = service.indexes[model].model

    def bare(query: str) -> None:
        input_ids, _ = user.tokenize([query])
        user.txt_enc.backbone(input_ids.to(user.device))

    with torch.inference_mode():
        single, reference = time_paired(lambda q: service.search_text(q, model, 10), bare, queries)
        ensemble, reference_2 = time_paired(lambda q: service.search_text(q, ENSEMBLE, 10), bare, queries) \
            if ENSEMBLE in service.model_choices else (None, None)
    out = {"search": single.as_dict(), "bare_text_backbone": reference.as_dict(),
           "ratio": round(single.p50_ms / reference.p50_ms, 3)}
    if ensemble is not None:
        out["ensemble_search"] = ensemble.as_dict()
        out["ensemble_ratio"] = round(ensemble.p50_ms / reference_2.p50_ms, 3)
    return out


def image_query(service: RetrievalService, paths: list, model: str = "SGE") -> dict:
    """search_image from a file (decode, preprocess, CLIP, USER head, search) vs the bare CLIP visual
    forward on already preprocessed pixels."""
    user = service.indexes[model].model
    extractor = user.region_extractor
    pixels = {str(p): extractor.pixels([open_image(p)]).to(user.device) for p in paths}
    with torch.inference_mode(), service._autocast():
        search, reference = time_paired(lambda p: service.search_image(str(p), model, 10),
                                        lambda p: extractor.visual(pixels[str(p)]), paths)
    return {"search": search.as_dict(), "bare_clip_visual": reference.as_dict(),
            "ratio": round(search.p50_ms / reference.p50_ms, 3)}


def gallery_encoding(service: RetrievalService, paths: list, user: Optional[USERModel] = None, repeats: int = 3,
                     stage_repeats: int = 3) -> dict:
    """Images per second through the service's gallery path vs the bare CLIP visual forward (same batches,
    pixels prepared beforehand), best of ``repeats``; ``user``: the model to encode with (the SGE one)."""
    user = user or service.indexes["SGE"].model
    extractor = user.region_extractor
    images = [[open_image(p) for p in batch] for batch in chunks(paths, service.batch_size)]
    batches = [extractor.pixels(batch).to(user.device) for batch in images]

    def bare() -> None:
        for pixels in batches:
            extractor.visual(pixels)

    def full() -> None:
        service.encode_image_files(user, paths)

    best = {"full": float("inf"), "bare": float("inf")}
    with torch.inference_mode(), service._autocast():
        bare()  # warm-up
        for _ in range(repeats):
            for name, fn in (("full", full), ("bare", bare)):
                started = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - started)
        stages = gallery_stages(user, list(chunks(paths, service.batch_size)), images, batches, stage_repeats)
    full_rate, bare_rate = len(paths) / best["full"], len(paths) / best["bare"]
    return {"images": len(paths), "images_per_s": round(full_rate, 1), "bare_clip_images_per_s": round(bare_rate, 1),
            "ratio": round(full_rate / bare_rate, 3), "ms_per_image": stages}


def gallery_stages(user, path_batches: list, images: list, pixels: list, repeats: int = 3) -> dict:
    """Where an image's time goes on the gallery path, each stage timed alone (best of ``repeats``), in ms
    per image: decoding the file, preprocessing, the CLIP forward, USER's image tower. ``images`` and
    ``pixels`` are ``path_batches`` already decoded and preprocessed (the inputs of the later stages).
    Called under the caller's inference mode and autocast."""
    extractor = user.region_extractor
    regions = [extractor.from_pixels(batch) for batch in pixels]
    stages = {
        "decode": lambda: [[open_image(p) for p in batch] for batch in path_batches],
        "preprocess": lambda: [extractor.pixels(batch) for batch in images],
        "clip": lambda: [extractor.from_pixels(batch) for batch in pixels],
        "user_head": lambda: [user.encode_regions(r.features, r.lengths, r.clip_embeds) for r in regions],
    }
    out = {}
    for name, fn in stages.items():
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - started)
        out[name] = round(min(seconds) / sum(map(len, path_batches)) * 1000, 3)
    return out


def model_with_clip(config: USERConfig, architecture: str) -> USERModel:
    """A USER model like ``config``'s on a full-size open_clip vision tower (``ViT-B-32``: 49 patch tokens of
    width 768, 224 px, ≈ 4.4 GFLOPs an image), randomly initialised: what a pretrained one costs, with no
    download. It shows what the gallery path adds to a CLIP of the size USER is used with."""
    import open_clip

    vision = open_clip.get_model_config(architecture)
    if vision is None:
        raise ValueError(f"unknown open_clip architecture {architecture!r}")
    grid = vision["vision_cfg"]["image_size"] // vision["vision_cfg"]["patch_size"]
    scaled = dataclasses.replace(config, clip_model=architecture, clip_pretrained=None,
                                 region_dim=vision["vision_cfg"]["width"], num_regions=grid * grid,
                                 clip_dim=vision["embed_dim"])
    return USERModel(scaled).eval()
