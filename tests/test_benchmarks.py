"""The benchmark suite's parts: the cross-attention matcher, the search-scaling harness, REST calls, and a
quick in-process run on the tiny bundle (timings are reported, never asserted)."""

import json

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks import cross_attention, search_scaling
from benchmarks.http import first_queries, rest_call, upload


def test_batched_scan_matches_the_per_pair_formula():
    torch.manual_seed(0)
    regions = F.normalize(torch.randn(5, 7, 16), dim=-1)
    words = F.normalize(torch.randn(6, 9, 16), dim=-1)
    lengths = torch.tensor([9, 3, 5, 1, 9, 4])
    mask = torch.arange(9)[None] < lengths[:, None]
    batched = cross_attention.scan_scores(regions, words, mask, chunk=4)
    for i in range(5):
        for j in range(6):
            expected = cross_attention.scan_pair(regions[i], words[j, : lengths[j]])
            assert batched[i, j] == pytest.approx(float(expected), abs=1e-5)


def test_search_scaling_rows_are_honest():
    rows = search_scaling.run(sizes=(3000,), dims=(32,), n_queries=20, log=lambda *_: None)
    by_kind = {row.index: row for row in rows}
    assert set(by_kind) == {"exact", "faiss-flat", "faiss-ivf", "faiss-hnsw"}
    assert by_kind["exact"].recall_at_10 == 1.0 and by_kind["faiss-flat"].recall_at_10 == 1.0
    assert all(0 <= row.recall_at_10 <= 1 and row.p50_ms > 0 for row in rows)


def test_clustered_vectors_are_unit_and_reproducible():
    a = search_scaling.clustered_unit_vectors(100, 24, clusters=5, seed=3)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert np.array_equal(a, search_scaling.clustered_unit_vectors(100, 24, clusters=5, seed=3))


def test_rest_calls_as_a_browser_makes_them(demo_url):
    url, service = demo_url
    url = url.rstrip("/")
    with httpx.Client(timeout=60) as client:
        gallery, status = rest_call(client, url, "search_text", [service.gallery.captions[0], "SGE", 3])
        assert len(gallery) == 3 and "results in" in status
        image = upload(client, url, service.gallery.image_paths[1])
        table, gallery, _ = rest_call(client, url, "search_image", [image, "CGE", 2])
        assert len(gallery) == 2
        with pytest.raises(RuntimeError, match="error"):
            rest_call(client, url, "search_text", ["", "SGE", 3])


def test_quick_in_process_run(tiny_bundle, tmp_path):
    from benchmarks import run

    out = tmp_path / "bench.json"
    results = run.main(["--quick", "--skip-http", "--skip-scaling", "--sge", str(tiny_bundle / "user-sge"),
                        "--cge", str(tiny_bundle / "user-cge"), "--gallery", str(tiny_bundle / "gallery"),
                        "--scale-clip", "", "--json", str(out)])
    assert json.loads(out.read_text())["text_to_image"]["ratio"] == results["text_to_image"]["ratio"] > 0
    assert results["cross_attention"]["cross_attention_s"] > 0 and results["gallery_encoding"]["images_per_s"] > 0
    stages = results["gallery_encoding"]["ms_per_image"]
    assert set(stages) == {"decode", "preprocess", "clip", "user_head"} and all(v > 0 for v in stages.values())
    assert "text → image" in run.report(results)


def test_gallery_encoding_on_a_full_size_clip(tiny_bundle):
    """The same USER head on open_clip's ViT-B-32 (random weights): its regions are the 7 x 7 patch tokens,
    and the gallery path and the bare forward both run on it."""
    from app.gallery import load_gallery
    from app.service import load_service
    from benchmarks import inprocess

    gallery = load_gallery(tiny_bundle / "gallery")
    service = load_service(str(tiny_bundle / "user-sge"), None, gallery, None, "cpu")
    scaled = inprocess.model_with_clip(service.indexes["SGE"].model.config, "ViT-B-32")
    assert (scaled.config.region_dim, scaled.config.num_regions, scaled.config.clip_dim) == (768, 49, 512)
    out = inprocess.gallery_encoding(service, gallery.image_paths[:2], scaled, repeats=1, stage_repeats=1)
    assert out["images"] == 2 and out["images_per_s"] > 0 and out["bare_clip_images_per_s"] > 0
    assert scaled.region_extractor.visual.output_tokens and out["ms_per_image"]["clip"] > out["ms_per_image"]["user_head"]
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        inprocess.model_with_clip(service.indexes["SGE"].model.config, "no-such-clip")


def test_first_queries_of_a_running_app(demo_url):
    url, service = demo_url
    out = first_queries(url.rstrip("/"), service.gallery.captions[0], service.gallery.image_paths[0], settle_s=0)
    assert set(out) == {"first_text_query_ms", "first_image_query_ms"} and all(v > 0 for v in out.values())
