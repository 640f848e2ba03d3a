"""The benchmark suite: ``python -m benchmarks.run [--quick] [--json out.json]``.

Every figure is a median (with p95) of repeated runs after warm-up, paired with its reference measured
in the same run, so the ratios hold on a noisy machine. See README "Performance" for the last results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402

from app.gallery import Gallery, load_gallery  # noqa: E402
from app.service import load_service, open_image  # noqa: E402

from . import cross_attention, http, inprocess, search_scaling  # noqa: E402
from .timing import chunks, machine  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "assets"

# (name, how to read it from the results, target, higher is better)
TARGETS = [
    ("text→image p50 / bare text backbone", ("text_to_image", "ratio"), 1.25, False),
    ("REST /search_text p50 (ms)", ("http", "rest_search_text", "p50_ms"), 60.0, False),
    ("warm start (s)", ("start", "warm_start_s"), 10.0, False),
    ("gallery encoding / bare CLIP visual", ("gallery_encoding", "ratio"), 0.8, True),
]


def small_gallery(gallery: Gallery, n: int, folder: Path) -> Path:
    """A copy of the first ``n`` images and their captions (the quick mode's start-up test)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(min(n, len(gallery))):
        shutil.copy(gallery.image_paths[i], folder / "images" / gallery.image_paths[i].name)
        owned = [gallery.captions[c] for c in gallery.captions_of(i)]
        lines.append(json.dumps({"image": gallery.image_paths[i].name, "captions": owned}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@torch.inference_mode()
def cross_attention_inputs(service, n_images: int, n_captions: int, model: str = "SGE"):
    """Backbone outputs for the first images and captions of the gallery (not timed: both methods need them)."""
    user = service.indexes[model].model
    regions, guides = [], []
    for batch in chunks(service.gallery.image_paths[:n_images], 64):
        extracted = user.extract_regions([open_image(p) for p in batch])
        regions.append(extracted.features.cpu())
        guides.append(extracted.clip_embeds.cpu())
    input_ids, lengths = user.tokenize(service.gallery.captions[:n_captions])
    hidden = torch.cat([user.txt_enc.backbone(ids) for ids in input_ids.split(256)])
    return torch.cat(regions), torch.cat(guides), hidden, lengths


def run(args) -> dict:
    quick = args.quick
    work = Path(tempfile.mkdtemp(prefix="user-bench-"))
    results: dict = {"machine": machine(), "quick": quick, "command": " ".join(["python -m benchmarks.run", *sys.argv[1:]])}
    gallery = load_gallery(args.gallery)
    started = time.perf_counter()
    service = load_service(args.sge, args.cge, gallery, work / "cache", args.device)
    results["service_build_s"] = round(time.perf_counter() - started, 1)
    n_queries, n_images = (30, 20) if quick else (200, 100)

    print("in-process queries ...", flush=True)
    results["text_to_image"] = inprocess.text_to_image(service, inprocess.sample_captions(service, n_queries))
    results["image_query"] = inprocess.image_query(service, inprocess.sample_images(service, n_images))
    encode_paths = gallery.image_paths[: 128 if quick else 512]
    results["gallery_encoding"] = inprocess.gallery_encoding(service, encode_paths)
    if args.scale_clip:
        print(f"gallery encoding on {args.scale_clip} ...", flush=True)
        scaled = inprocess.model_with_clip(service.indexes["SGE"].model.config, args.scale_clip)
        results["gallery_encoding_scaled"] = {
            "clip": args.scale_clip,
            **inprocess.gallery_encoding(service, encode_paths[: 16 if quick else 64], scaled, repeats=2, stage_repeats=1),
        }

    if not args.skip_cross_attention:
        print("dual encoder vs cross-attention ...", flush=True)
        sizes = (100, 500) if quick else (len(gallery), len(gallery.captions))
        results["cross_attention"] = cross_attention.compare(service.indexes["SGE"].model,
                                                             *cross_attention_inputs(service, *sizes))
    if not args.skip_http:
        print("app start-up and HTTP round trips ...", flush=True)
        app_gallery = small_gallery(gallery, 100, work / "gallery") if quick else Path(args.gallery)
        app_args = ["--sge", args.sge, "--cge", args.cge, "--gallery", str(app_gallery)]
        first = (inprocess.sample_captions(service, 1, seed=2)[0], inprocess.sample_images(service, 1, seed=2)[0])
        results["start"] = http.start_times(app_args, work / "app-cache", work, first=first)
        results["start"]["gallery_images"] = len(load_gallery(app_gallery))
        with http.running_app([*app_args, "--cache-dir", str(work / "app-cache")], work / "http.log") as (url, _, _):
            queries = inprocess.sample_captions(service, 20 if quick else 100, seed=1)
            results["http"] = http.round_trips(url, queries, inprocess.sample_images(service, 10 if quick else 40, seed=1))
    if not args.skip_scaling:
        print("search scaling ...", flush=True)
        sizes = (10_000,) if quick else (10_000, 100_000, 1_000_000)
        rows = search_scaling.run(sizes=sizes, dims=(gallery_dim(service), 1024))
        results["search_scaling"] = [row.__dict__ for row in rows]
    shutil.rmtree(work, ignore_errors=True)
    return results


def gallery_dim(service) -> int:
    return next(iter(service.indexes.values())).model.config.embed_dim


def lookup(results: dict, path: tuple):
    for key in path:
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results


def report(results: dict) -> str:
    m = results["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads)"
             + (f", {m['gpu']}" if "gpu" in m else ""), ""]
    t, i = results["text_to_image"], results["image_query"]
    g, x = results["gallery_encoding"], results.get("cross_attention")
    lines += [
        "| measurement | p50 | p95 | reference p50 | ratio |", "| --- | --- | --- | --- | --- |",
        f"| text → image (SGE, top 10) | {t['search']['p50_ms']:.1f} ms | {t['search']['p95_ms']:.1f} ms | "
        f"{t['bare_text_backbone']['p50_ms']:.1f} ms (tokenize + text backbone) | {t['ratio']:.2f}x |",
    ]
    if "ensemble_search" in t:
        lines.append(f"| text → image (SGE+CGE ensemble) | {t['ensemble_search']['p50_ms']:.1f} ms | "
                     f"{t['ensemble_search']['p95_ms']:.1f} ms | same | {t['ensemble_ratio']:.2f}x |")
    lines.append(f"| image file → captions + images (SGE) | {i['search']['p50_ms']:.1f} ms | {i['search']['p95_ms']:.1f} ms | "
                 f"{i['bare_clip_visual']['p50_ms']:.1f} ms (CLIP visual forward) | {i['ratio']:.2f}x |")
    for key, label in (("rest_baseline", "REST /random_query (Gradio's own overhead)"), ("rest_search_text", "REST /search_text"), ("rest_search_image", "REST upload + /search_image"),
                       ("client_search_text", "gradio_client /search_text"),
                       ("client_search_image", "gradio_client /search_image")):
        if key in results.get("http", {}):
            h = results["http"][key]
            lines.append(f"| {label} round trip | {h['p50_ms']:.1f} ms | {h['p95_ms']:.1f} ms | | |")
    lines += ["", f"gallery encoding: {g['images_per_s']} images/s vs bare CLIP visual {g['bare_clip_images_per_s']} "
                  f"images/s ({g['ratio']:.2f}x, {g['images']} images)"]
    if "ms_per_image" in g:
        lines.append("  per image, each stage alone: " + ", ".join(f"{k} {v:.3f} ms" for k, v in g["ms_per_image"].items()))
    if "gallery_encoding_scaled" in results:
        c = results["gallery_encoding_scaled"]
        lines += [f"gallery encoding, USER on open_clip {c['clip']} (random weights: a pretrained one's cost): "
                  f"{c['images_per_s']} images/s vs bare CLIP visual {c['bare_clip_images_per_s']} images/s "
                  f"({c['ratio']:.2f}x, {c['images']} images)",
                  "  per image, each stage alone: " + ", ".join(f"{k} {v:.3f} ms" for k, v in c["ms_per_image"].items())]
    if "start" in results:
        s = results["start"]
        lines.append(f"python app.py until serving ({s['gallery_images']} gallery images): cold {s['cold_start_s']} s, "
                     f"warm {s['warm_start_s']} s")
        if "first_text_query_ms" in s:
            lines.append(f"  its first queries (REST, 2 s after serving): text {s['first_text_query_ms']} ms, "
                         f"image upload + query {s['first_image_query_ms']} ms")
    if x:
        lines.append(f"all-pairs scoring of {x['images']} images x {x['captions']} captions: USER {x['user_s']} s, "
                     f"SCAN-style cross-attention {x['cross_attention_s']} s ({x['ratio']}x)")
    if "search_scaling" in results:
        lines += ["", "| N | E | index | build s | p50 ms | p95 ms | recall@10 | memory MB | settings |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in results["search_scaling"]:
            lines.append(f"| {r['n']:,} | {r['dim']} | {r['index']} | {r['build_s']} | {r['p50_ms']} | {r['p95_ms']} | "
                         f"{r['recall_at_10']} | {r['memory_mb']} | {r['params']} |")
    lines += ["", "| target | measured | goal | met |", "| --- | --- | --- | --- |"]
    for name, path, goal, higher in TARGETS:
        value = lookup(results, path)
        met = "n/a" if value is None else ("yes" if (value >= goal if higher else value <= goal) else "no")
        lines.append(f"| {name} | {value} | {'≥' if higher else '≤'} {goal} | {met} |")
    million = [r for r in results.get("search_scaling", []) if r["n"] >= 1_000_000 and r["index"] == "faiss-hnsw"]
    for r in million:
        met = "yes" if r["p50_ms"] <= 30 and r["recall_at_10"] >= 0.95 else "no"
        lines.append(f"| 1M vectors, E={r['dim']}, HNSW (the app's index) | {r['p50_ms']} ms, recall {r['recall_at_10']} "
                     f"| ≤ 30 ms, ≥ 0.95 | {met} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes: a few minutes")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--sge", default=str(ASSETS / "user-sge"))
    p.add_argument("--cge", default=str(ASSETS / "user-cge"))
    p.add_argument("--gallery", default=str(ASSETS / "gallery"))
    p.add_argument("--skip-http", action="store_true", help="no app start-up and HTTP round trips")
    p.add_argument("--skip-scaling", action="store_true", help="no search-scaling table")
    p.add_argument("--skip-cross-attention", action="store_true", help="no dual-encoder vs cross-attention timing")
    p.add_argument("--scale-clip", default="ViT-B-32",
                   help="also time gallery encoding with USER on this full-size open_clip tower ('' to skip)")
    args = p.parse_args(argv)
    results = run(args)
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
