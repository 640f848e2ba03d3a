"""The gradio-free retrieval service, with tiny checkpoints: search, caching, and bad input."""

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from app.attention import attention_maps
from app.gallery import load_gallery
from app.index import EmbeddingIndex
from app.service import ENSEMBLE, QueryError, RetrievalService, load_service, open_image
from model import USERModel


@pytest.fixture(scope="module")
def service(tiny_bundle, tmp_path_factory):
    gallery = load_gallery(tiny_bundle / "gallery")
    return load_service(str(tiny_bundle / "user-sge"), str(tiny_bundle / "user-cge"), gallery,
                        tmp_path_factory.mktemp("cache"))


def test_text_search_ranks_and_marks_ground_truth(service):
    caption = service.gallery.captions[7]
    for model in service.model_choices:
        result = service.search_text(caption, model, 5)
        scores = [h.score for h in result.images]
        assert len(result.images) == 5 and scores == sorted(scores, reverse=True)
        assert [h.rank for h in result.images] == [1, 2, 3, 4, 5]
    full = service.search_text(caption.upper() + "  ", "SGE", len(service.gallery))
    marked = [h.index for h in full.images if h.is_ground_truth]
    assert marked == [int(service.gallery.caption_image[7])]


def test_ensemble_averages_the_models(service):
    text = "a large red circle on the left"
    single = {name: {h.index: h.score for h in service.search_text(text, name, 12).images} for name in ("SGE", "CGE")}
    ensemble = service.search_text(text, ENSEMBLE, 12).images
    for hit in ensemble:
        assert hit.score == pytest.approx((single["SGE"][hit.index] + single["CGE"][hit.index]) / 2, abs=1e-5)


def test_image_search_from_gallery_finds_itself_first(service):
    result = service.search_image(None, "SGE", 3, gallery_index=4)
    assert result.images[0].index == 4 and result.images[0].is_ground_truth
    assert len(result.captions) == 3
    uploaded = service.search_image(str(service.gallery.image_paths[4]), "CGE", 3)
    assert uploaded.images[0].index == 4


@pytest.mark.parametrize("k, expected", [(0, "at least 1"), (-3, "at least 1"), ("ten", "whole number"), (None, "whole number")])
def test_bad_top_k(service, k, expected):
    with pytest.raises(QueryError, match=expected):
        service.search_text("a red circle", "SGE", k)


def test_top_k_is_capped_and_text_is_cleaned(service):
    assert len(service.search_text("a red circle", "SGE", 10_000).images) == len(service.gallery)
    for bad in ["", "   \n\t ", "\x00\x01"]:
        with pytest.raises(QueryError, match="type a description"):
            service.search_text(bad, "SGE", 5)
    long = service.search_text("red " * 5000, "SGE", 5)
    assert "cut" in long.note
    for text in ["😀 a red circle 🔴", "مربع أحمر", "红色的圆", "a\u202eright-to-left"]:
        assert len(service.search_text(text, "CGE", 3).images) == 3
    with pytest.raises(QueryError, match="unknown model"):
        service.search_text("a red circle", "VSE", 5)


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("data, message", [
    (b"", "could not be read"),
    (np.random.default_rng(1).bytes(2048), "could not be read"),  # fixed bytes: reproducible
    (png_bytes(Image.new("RGB", (64, 64), "red"))[:60], "could not be read"),
])
def test_unreadable_images_get_a_clear_message(service, data, message):
    with pytest.raises(QueryError, match=message):
        service.search_image(data, "SGE", 3)


def jpeg_bytes(image: Image.Image) -> bytes:
    return png_bytes(image, "JPEG")


def animated_gif() -> bytes:
    frames = [Image.new("P", (32, 32), i * 40) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def palette_with_transparency() -> bytes:
    image = Image.new("P", (24, 24), 1)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=1)  # index 1 (blue) is transparent: composited on white
    return buffer.getvalue()


@pytest.mark.parametrize("data", [
    jpeg_bytes(Image.new("RGB", (64, 64), "red"))[:200],  # truncated JPEG
    b"GIF89a\x10\x00",  # a GIF header cut inside the screen descriptor (fixed bytes: random ones may decode)
    b"\x89PNG\r\n\x1a\n" + np.random.default_rng(0).bytes(500),  # a PNG signature, then noise
])
def test_more_broken_files_get_a_clear_message(service, data):
    with pytest.raises(QueryError, match="could not be read"):
        service.search_image(data, "SGE", 3)


@pytest.mark.parametrize("data, expected_mode", [
    (jpeg_bytes(Image.new("CMYK", (30, 30), (0, 255, 255, 0))), "CMYK"),
    (png_bytes(Image.new("I;16", (30, 30), 40000)), "I;16"),
    (palette_with_transparency(), "P"),
    (animated_gif(), "P"),
])
def test_encoded_unusual_images_work(service, data, expected_mode):
    assert Image.open(io.BytesIO(data)).mode == expected_mode
    assert len(service.search_image(data, "SGE", 2).images) == 2


def test_conversions_keep_what_a_viewer_shows():
    assert open_image(palette_with_transparency()).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    first = open_image(animated_gif())
    assert first.getpixel((0, 0)) == Image.open(io.BytesIO(animated_gif())).convert("RGB").getpixel((0, 0))
    cmyk = open_image(jpeg_bytes(Image.new("CMYK", (8, 8), (0, 255, 255, 0))))
    red, green, blue = cmyk.getpixel((4, 4))
    assert red > 200 and green < 60 and blue < 60  # CMYK (0, 100%, 100%, 0) is red


def test_decompression_bomb_is_refused_before_decoding(service):
    bomb = png_bytes(Image.new("1", (30000, 30000)))  # a small file that would decode to 900 megapixels
    with pytest.raises(QueryError, match="megapixels"):
        service.search_image(bomb, "SGE", 3)


@pytest.mark.parametrize("image", [
    Image.new("RGBA", (40, 30), (255, 0, 0, 128)), Image.new("P", (20, 20)), Image.new("I;16", (30, 30)),
    Image.new("CMYK", (30, 30)), Image.new("L", (1, 1)), Image.new("RGB", (10000, 10)),
])
def test_unusual_images_work(service, image):
    assert len(service.search_image(image, "SGE", 2).images) == 2


def test_exif_rotation_is_respected():
    image = Image.new("RGB", (40, 20), "blue")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° when displayed
    data = io.BytesIO()
    image.save(data, "JPEG", exif=exif.tobytes())
    assert open_image(data.getvalue()).size == (20, 40)


def test_compare_reports_agreement(service):
    summary = service.compare(text=service.gallery.captions[0], k=4)
    assert set(summary["results"]) == {"SGE", "CGE"}
    assert 0 <= summary["overlap"] <= 1
    assert set(summary["ground_truth_rank"]) == {"SGE", "CGE"}
    assert summary["has_ground_truth"]
    by_image = service.compare(gallery_index=2, k=4)
    assert by_image["ground_truth_rank"]["SGE"] == 1 and by_image["has_ground_truth"]
    made_up = service.compare(text="seven shapes in a row", k=4)
    assert not made_up["has_ground_truth"] and set(made_up["ground_truth_rank"].values()) == {None}


def test_attention_maps(service):
    image = open_image(str(service.gallery.image_paths[0]))
    sge = attention_maps(service.indexes["SGE"].model, image)
    cge = attention_maps(service.indexes["CGE"].model, image)
    assert sge.enhancement_grid.shape == (4, 4) and sge.guide_grid.sum() == pytest.approx(1, abs=1e-5)
    assert (sge.enhancement_grid ** 2).sum() == pytest.approx(1, abs=1e-4)
    assert cge.guide is None and cge.enhancement.size == (288, 288)


def test_about_and_gallery_metrics(service):
    info = service.about()
    assert info["gallery"]["images"] == 12 and set(info["models"]) == {"SGE", "CGE"}
    metrics = service.gallery_metrics()
    assert set(metrics) == {"SGE", "CGE", ENSEMBLE} and 0 <= metrics["SGE"]["rsum"] <= 600


def test_cache_is_reused_and_rebuilt_when_corrupt(tiny_bundle, tmp_path, monkeypatch):
    gallery = load_gallery(tiny_bundle / "gallery")
    model = USERModel.from_pretrained(tiny_bundle / "user-sge")
    first = RetrievalService({"SGE": model}, gallery, tmp_path)
    files = list(tmp_path.glob("emb-*.safetensors"))
    assert len(files) == 1
    calls = []
    original = RetrievalService._encode_gallery
    monkeypatch.setattr(RetrievalService, "_encode_gallery", lambda self, m: calls.append(1) or original(self, m))
    warm = RetrievalService({"SGE": model}, gallery, tmp_path)
    assert calls == [] and torch.equal(warm.indexes["SGE"].image_index.vectors, first.indexes["SGE"].image_index.vectors)
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated
    rebuilt = RetrievalService({"SGE": model}, gallery, tmp_path)
    assert calls == [1]
    assert torch.allclose(rebuilt.indexes["SGE"].image_index.vectors, first.indexes["SGE"].image_index.vectors)


def test_warm_up_loads_what_a_cached_start_left_for_the_first_query(tiny_bundle, tmp_path):
    """From the embedding cache, no CLIP is loaded; warm_up loads it (once, shared by both models) and runs a
    text and an image through every model without recording a query."""
    gallery = load_gallery(tiny_bundle / "gallery")
    load_service(str(tiny_bundle / "user-sge"), str(tiny_bundle / "user-cge"), gallery, tmp_path)
    cached = load_service(str(tiny_bundle / "user-sge"), str(tiny_bundle / "user-cge"), gallery, tmp_path)
    sge, cge = (cached.indexes[name].model for name in ("SGE", "CGE"))
    assert sge._extractor is None and cge._extractor is None
    assert cached.warm_up() > 0
    assert sge._extractor is not None and cge.region_extractor is sge.region_extractor
    assert len(cached.latencies) == 0
    hits = cached.search_image(gallery.image_paths[1], "SGE", 1).images
    assert hits[0].index == 1


def test_a_failing_warm_up_is_logged_not_raised(service, monkeypatch, caplog):
    def unreadable(entries, image):
        raise QueryError("this file could not be read as an image")

    monkeypatch.setattr(service, "_encode_query_image", unreadable)
    assert service.warm_up() >= 0
    assert "warm-up stopped early: this file could not be read" in caplog.text


def test_a_cache_that_does_not_fit_is_rebuilt(tiny_bundle, tmp_path):
    from safetensors.torch import save_file

    gallery = load_gallery(tiny_bundle / "gallery")
    model = USERModel.from_pretrained(tiny_bundle / "user-sge")
    first = RetrievalService({"SGE": model}, gallery, tmp_path)
    cache = next(tmp_path.glob("emb-*.safetensors"))
    save_file({"images": torch.zeros(len(gallery), 3), "captions": torch.zeros(len(gallery.captions), 3)}, str(cache))
    again = RetrievalService({"SGE": model}, gallery, tmp_path)  # wrong width: not used
    assert torch.allclose(again.indexes["SGE"].image_index.vectors, first.indexes["SGE"].image_index.vectors)
    other = RetrievalService({"CGE": USERModel.from_pretrained(tiny_bundle / "user-cge")}, gallery, tmp_path)
    assert len(list(tmp_path.glob("emb-*.safetensors"))) == 2  # another checkpoint, another file
    assert not torch.allclose(other.indexes["CGE"].image_index.vectors, first.indexes["SGE"].image_index.vectors)


CONCURRENT_START = """
import sys
from app.gallery import load_gallery
from app.service import load_service
service = load_service(sys.argv[1], sys.argv[2], load_gallery(sys.argv[3]), sys.argv[4])
print(float(service.indexes["SGE"].image_index.vectors.sum()))
"""


def test_two_processes_filling_one_cache_do_not_corrupt_it(tiny_bundle, tmp_path):
    import subprocess
    import sys

    args = [str(tiny_bundle / "user-sge"), str(tiny_bundle / "user-cge"), str(tiny_bundle / "gallery"), str(tmp_path)]
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    runs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_START, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err[-2000:] for _, err in outputs]
    assert len({out.strip() for out, _ in outputs}) == 1
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".safetensors", ".safetensors"]  # no temporary left
    warm = load_service(args[0], args[1], load_gallery(args[2]), tmp_path)
    assert float(warm.indexes["SGE"].image_index.vectors.sum()) == pytest.approx(float(outputs[0][0]), abs=1e-4)


def test_precomputed_checkpoint_refuses_uploads(tiny_model, toy_precomp):
    gallery = load_gallery(toy_precomp, "test")
    service = RetrievalService({"SGE": tiny_model}, gallery)
    assert not gallery.has_images and len(service.search_text("a red circle", "SGE", 3).images) == 3
    with pytest.raises(QueryError, match="precomputed detector features"):
        service.search_image(Image.new("RGB", (8, 8)), "SGE", 3)
    assert service.search_image(None, "SGE", 3, gallery_index=1).images[0].index == 1


@pytest.mark.parametrize("kind", ["exact", "faiss-flat", "faiss-hnsw"])
def test_index_kinds_agree_on_small_data(kind):
    torch.manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(500, 16), dim=1)
    queries = vectors[:5] + 0.01
    exact_scores, exact_idx = EmbeddingIndex(vectors, "exact").search(queries, 10)
    scores, idx = EmbeddingIndex(vectors, kind).search(queries, 10)
    assert idx[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert np.allclose(scores.numpy(), exact_scores.numpy(), atol=1e-5)


def test_shared_frozen_parts_give_the_models_own_embeddings(service):
    """SGE and CGE share one frozen text backbone and one CLIP; their gallery embeddings must equal what
    each model computes on its own."""
    sge, cge = (service.indexes[name].model for name in ("SGE", "CGE"))
    assert sge.txt_enc.bert is cge.txt_enc.bert and sge.region_extractor is cge.region_extractor
    captions = service.gallery.captions[:9]
    images = [open_image(p) for p in service.gallery.image_paths[:4]]
    for name in ("SGE", "CGE"):
        entry = service.indexes[name]
        assert torch.allclose(entry.caption_index.vectors[:9], entry.model.encode_texts(captions), atol=1e-5)
        assert torch.allclose(entry.image_index.vectors[:4], entry.model.encode_images(images), atol=1e-5)


def test_compare_runs_the_shared_text_backbone_once(service):
    bert = service.indexes["SGE"].model.txt_enc.bert
    calls = []
    handle = bert.register_forward_hook(lambda *_: calls.append(1))
    try:
        summary = service.compare(text="a small red circle", k=3)
    finally:
        handle.remove()
    assert calls == [1] and set(summary["results"]) == {"SGE", "CGE"}


def test_mixed_precision_keeps_embeddings_and_scores_float32(tiny_bundle, tmp_path, monkeypatch):
    """The CUDA path runs the models under bfloat16 autocast; the same code under CPU autocast must
    still hand float32 embeddings to the index and rank like float32 does (no GPU here)."""
    gallery = load_gallery(tiny_bundle / "gallery")
    exact = load_service(str(tiny_bundle / "user-sge"), None, gallery, None)
    monkeypatch.setattr(RetrievalService, "_autocast", lambda self: torch.autocast("cpu", dtype=torch.bfloat16))
    mixed = load_service(str(tiny_bundle / "user-sge"), None, gallery, None)
    vectors = mixed.indexes["SGE"].image_index.vectors
    assert vectors.dtype == torch.float32
    reference = exact.indexes["SGE"].image_index.vectors
    assert not torch.equal(vectors, reference)  # bfloat16 did run
    assert torch.allclose(vectors, reference, atol=0.05)
    query = gallery.captions[3]
    result = mixed.search_text(query, "SGE", 3)
    assert [type(h.score) for h in result.images] == [float] * 3
    by_image = mixed.search_image(str(gallery.image_paths[5]), "SGE", 1)
    assert by_image.images[0].index == 5  # a gallery image finds itself in bfloat16 too
