import json

import torch
from PIL import Image

from model.mini_clip import train_mini_clip
from model.regions import ClipGridExtractor
from model.synthetic import generate

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


def test_mini_clip_trains_and_loads_through_local_dir(tmp_path):
    data = tmp_path / "scenes"
    generate(data, {"train": 64, "val": 0, "test": 4}, seed=0, image_size=32)
    folder = train_mini_clip(data, tmp_path / "clip", TINY, epochs=6, batch_size=16, lr=3e-3)
    log = json.loads((folder / "training_log.json").read_text())
    assert log[-1]["loss"] < log[0]["loss"]
    extractor = ClipGridExtractor(f"local-dir:{folder}")
    regions = extractor([Image.open(p) for p in sorted((data / "images").glob("test_*.png"))])
    assert regions.features.shape == (4, 16, 32) and regions.clip_embeds.shape == (4, 16)
    assert torch.isfinite(regions.features).all()
