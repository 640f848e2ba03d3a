"""The converter: an official-format checkpoint (made here, with an independent re-implementation of
the release's forward) converts, loads, and gives the same embeddings."""

import argparse
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel

from model import USERModel
from model.convert_official import convert, read_official
from official_reference import RefImageEncoder, RefTextEncoder


@pytest.fixture
def official_checkpoint(tmp_path, tiny_bert):
    torch.manual_seed(0)
    image = RefImageEncoder(d=24, e=16, n_regions=6)
    text = RefTextEncoder(AutoModel.from_pretrained(tiny_bert), e=16)
    image.train()  # fill BatchNorm running statistics with something other than the defaults
    with torch.no_grad():
        for _ in range(3):
            image(torch.randn(8, 6, 24) * 2 + 1, torch.full((8,), 6))
    image.eval(), text.eval()
    opt = argparse.Namespace(embed_size=16, img_dim=24, precomp_enc_type="basic", data_name="f30k_precomp")
    path = tmp_path / "model_best.pth"
    torch.save({"model": [image.state_dict(), text.state_dict()], "opt": opt, "epoch": 3, "best_rsum": 512.3}, path)
    return path, image, text


def test_converted_checkpoint_reproduces_the_release(tmp_path, tiny_bert, official_checkpoint):
    path, ref_image, ref_text = official_checkpoint
    convert(path, tiny_bert, tmp_path / "converted")
    model = USERModel.from_pretrained(tmp_path / "converted")
    assert model.config.enhancement == "sge" and model.config.embed_dim == 16
    torch.manual_seed(1)
    regions = torch.randn(5, 6, 24) * 2 + 1
    lengths = torch.full((5,), 6)
    with torch.no_grad():
        assert torch.allclose(model.encode_regions(regions, lengths), ref_image(regions, lengths), atol=1e-4)
        ids, text_lengths = model.tokenize(["a red circle", "the blue square is left of a star", "dog"])
        assert torch.allclose(model.encode_token_ids(ids, text_lengths), ref_text(ids, text_lengths), atol=1e-4)


def test_cli_and_release_buffers(tmp_path, tiny_bert, official_checkpoint):
    path, ref_image, _ = official_checkpoint
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "model.convert_official", str(path), "--text-backbone", tiny_bert, "--out", str(out)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "USER-SGE" in result.stdout
    model = USERModel.from_pretrained(out)
    running_mean = ref_image.state_dict()["mlp.bns.0.running_mean"]
    assert torch.equal(model.img_enc.mlp.bns[0].running_mean, running_mean)
    assert "512.3" in (out / "README.md").read_text()


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_carrying_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": [{}, {}], "opt": Payload()}, path)
    with pytest.raises(ValueError, match="weights-only"):
        read_official(path)


def test_wrong_layout_is_refused(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="release's format"):
        read_official(path)
