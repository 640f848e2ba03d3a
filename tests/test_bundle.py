"""The embedded default under assets/: every checkpoint loads offline and really retrieves."""

import json
from pathlib import Path

import pytest

from app.gallery import load_gallery
from app.service import load_service
from model import USERModel
from model import build_default

ASSETS = Path(__file__).resolve().parents[1] / "assets"


@pytest.fixture(scope="module")
def bundle_service(tmp_path_factory):
    gallery = load_gallery(ASSETS / "gallery")
    return load_service(str(ASSETS / "user-sge"), str(ASSETS / "user-cge"), gallery, tmp_path_factory.mktemp("c"))


def test_bundle_is_complete_and_small():
    for name in ("mini-clip/open_clip_model.safetensors", "user-sge/model.safetensors", "user-cge/model.safetensors",
                 "gallery/dataset.json", "manifest.json"):
        assert (ASSETS / name).is_file(), name
    total = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    assert total < 30 * 1024 * 1024
    for variant in ("sge", "cge"):
        card = (ASSETS / f"user-{variant}" / "README.md").read_text()
        assert "model-index" in card and "synthetic-scenes test" in card


@pytest.mark.parametrize("variant", ["sge", "cge"])
def test_checkpoints_load_offline(variant):
    model = USERModel.from_pretrained(ASSETS / f"user-{variant}")
    assert model.config.enhancement == variant and model.config.region_extractor == "clip-grid"


def test_queries_retrieve_their_scenes(bundle_service):
    gallery = bundle_service.gallery
    probes = list(range(0, len(gallery.captions), len(gallery.captions) // 40))[:40]  # 40 fixed captions
    for model in bundle_service.model_choices:
        found = sum(
            int(gallery.caption_image[c]) in {h.index for h in bundle_service.search_text(gallery.captions[c], model, 5).images}
            for c in probes
        )
        assert found >= 0.8 * len(probes), f"{model}: only {found}/{len(probes)} captions found their image in the top 5"


def test_image_queries_find_their_captions(bundle_service):
    for index in (0, 17, 333):
        result = bundle_service.search_image(str(bundle_service.gallery.image_paths[index]), "Ensemble", 5)
        assert result.images[0].index == index  # the uploaded file is its own nearest neighbour


def test_quick_rebuild_runs_end_to_end(tmp_path):
    manifest = build_default.main(["--quick", "--out", str(tmp_path / "bundle"), "--work", str(tmp_path / "work")])
    assert set(manifest["test_metrics"]) == {"user-sge", "user-cge"}
    saved = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert saved["settings"]["counts"]["train"] == 320
    model = USERModel.from_pretrained(tmp_path / "bundle" / "user-cge")
    assert model.encode_texts(["a small red circle"]).shape == (1, 32)
