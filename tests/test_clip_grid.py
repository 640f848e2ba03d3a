"""Raw images end to end: a tiny open_clip tower in the local-dir layout gives the regions (patch
tokens) and CGE's guide; checkpoints reference it by a path relative to themselves."""

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from model import USERModel
from model.regions import ClipGridExtractor, save_open_clip
from conftest import TINY_CLIP, make_config


@pytest.fixture(scope="module")
def clip_checkpoint_dir(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("clip-root")
    save_open_clip(open_clip.CLIP(**TINY_CLIP), TINY_CLIP, root / "clip")
    return root


def images(n=3):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 50, 3), dtype=np.uint8)) for i in range(n)]


def test_extractor_gives_patch_tokens_and_unit_clip_embeddings(clip_checkpoint_dir):
    extractor = ClipGridExtractor(f"local-dir:{clip_checkpoint_dir / 'clip'}")
    out = extractor(images() + [Image.new("L", (9, 9)), Image.new("RGBA", (20, 10))])
    assert out.features.shape == (5, 16, 24)  # (32/8)^2 patches, width 24
    assert out.clip_embeds.shape == (5, 16)
    assert torch.allclose(out.clip_embeds.norm(dim=1), torch.ones(5), atol=1e-5)


def test_batched_preprocessing_equals_open_clips_own(clip_checkpoint_dir):
    extractor = ClipGridExtractor(f"local-dir:{clip_checkpoint_dir / 'clip'}")
    size = extractor.visual.image_size
    size = size if isinstance(size, int) else size[0]
    at_input_size = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    batch = images() + [Image.new("L", (9, 9)), Image.new("RGBA", (20, 10)), at_input_size]
    assert extractor._pil_steps is not None  # open_clip's pipeline is recognised, so the fast path runs
    assert extractor._input_size == (size, size)  # images of this size skip resize and crop
    expected = torch.stack([extractor.preprocess(image.convert("RGB")) for image in batch])
    assert torch.allclose(extractor.pixels(batch), expected, atol=1e-6)


def test_unknown_clip_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="could not load the CLIP region extractor"):
        ClipGridExtractor(f"local-dir:{tmp_path / 'missing'}")


@pytest.mark.parametrize("enhancement", ["sge", "cge"])
def test_raw_images_end_to_end_and_relative_reference(clip_checkpoint_dir, tiny_bert, enhancement):
    config = make_config(tiny_bert, enhancement=enhancement, region_extractor="clip-grid", clip_model="local-dir:../clip",
                         region_dim=24, num_regions=16, clip_dim=16)
    torch.manual_seed(0)
    model = USERModel(config).eval()
    folder = clip_checkpoint_dir / f"user-{enhancement}"
    model.source_dir = folder  # as if it had been loaded from there
    before = model.encode_images(images())
    model.save_pretrained(folder)
    loaded = USERModel.from_pretrained(folder)
    after = loaded.encode_images(images())
    assert before.shape == (3, 16)
    assert torch.allclose(before, after, atol=1e-5)
    detailed = loaded.encode_regions_detailed(loaded.extract_regions(images(1)))
    assert detailed.enhance_attention.shape == (1, 16)
    assert (detailed.region_weights is not None) == (enhancement == "sge")
    # the CLIP is referenced, not copied into the USER checkpoint
    assert not (folder / "open_clip_model.safetensors").exists()


def test_train_and_evaluate_on_raw_images(clip_checkpoint_dir, tiny_bert, tmp_path, monkeypatch):
    """Karpathy JSON + images → cached CLIP regions → training → a checkpoint that encodes raw images."""
    from model import evaluate as evaluate_cli
    from model import train
    from model.synthetic import generate

    data = tmp_path / "scenes"
    generate(data, {"train": 64, "val": 16, "test": 8}, seed=0, image_size=32)
    monkeypatch.chdir(clip_checkpoint_dir)  # a relative CLIP path, as a user would type it
    out = tmp_path / "run"
    train.main(["--data", str(data), "--val-split", "val", "--text-backbone", tiny_bert, "--out", str(out),
                "--region-extractor", "clip-grid", "--clip-model", "local-dir:clip", "--enhancement", "cge",
                "--embed-dim", "16", "--batch-size", "16", "--queue-size", "32", "--epochs", "1"])
    assert len(list((data / "cache").glob("train-*.npz"))) == 1  # frozen extractor: regions cached once
    monkeypatch.chdir(tmp_path)
    model = USERModel.from_pretrained(out / "best")
    assert model.config.clip_model == "local-dir:" + str(__import__("os").path.relpath(clip_checkpoint_dir / "clip", out / "best"))
    assert model.encode_images(images(2)).shape == (2, 16)
    results = evaluate_cli.main(["--checkpoint", str(out / "best"), "--data", str(data), "--split", "test", "--json"])
    assert 0 <= results[str(out / "best")]["all"]["rsum"] <= 600
