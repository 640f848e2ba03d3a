"""Training end to end on a small learnable toy set (SCAN layout), single process and 2-process DDP."""

import json
import os
import subprocess
import sys

import pytest
import torch

from model import USERModel
from model import evaluate as evaluate_cli
from model import train

ARGS = ["--embed-dim", "32", "--batch-size", "32", "--queue-size", "128", "--lr", "2e-3",
        "--lambda-loss", "1", "--momentum", "0.9", "--max-text-length", "16"]


def run_train(data, tiny_bert, out, *extra):
    return train.main(["--data", str(data), "--text-backbone", tiny_bert, "--out", str(out), *ARGS, *extra])


def test_training_lowers_loss_and_beats_random(toy_precomp, tiny_bert, tmp_path):
    torch.manual_seed(0)
    result = run_train(toy_precomp, tiny_bert, tmp_path / "run", "--epochs", "3")
    history = result["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    chance_r1 = 100 / 40  # 40 val images
    best = max(history, key=lambda h: h["rsum"])
    assert best["t2i_r1"] > 4 * chance_r1 and best["i2t_r1"] > 4 * chance_r1
    # the saved best model evaluates to the same numbers through the CLI
    results = evaluate_cli.main(["--checkpoint", str(tmp_path / "run" / "best"), "--data", str(toy_precomp),
                                 "--split", "dev", "--json"])
    assert results[str(tmp_path / "run" / "best")]["all"]["rsum"] == pytest.approx(best["rsum"], abs=1e-6)
    card = (tmp_path / "run" / "best" / "README.md").read_text()
    assert "model-index" in card


def test_resume_continues_from_the_saved_epoch(toy_precomp, tiny_bert, tmp_path):
    out = tmp_path / "run"
    run_train(toy_precomp, tiny_bert, out, "--epochs", "1", "--max-steps-per-epoch", "5")
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 0 and "image_queue" in state["moco"]
    resumed = run_train(toy_precomp, tiny_bert, out, "--epochs", "2", "--max-steps-per-epoch", "5",
                        "--resume", str(out / "last.pt"))
    assert [h["epoch"] for h in resumed["history"]] == [1]


@pytest.mark.parametrize("extra", [["--enhancement", "cge"], ["--enhancement", "none", "--no-queue"],
                                   ["--freeze-text-backbone"], ["--freeze-text-backbone", "--no-augment"]])
def test_variants_train_and_load(toy_precomp, tiny_bert, tmp_path, extra):
    run_train(toy_precomp, tiny_bert, tmp_path / "run", "--epochs", "1", "--max-steps-per-epoch", "4", *extra)
    model = USERModel.from_pretrained(tmp_path / "run" / "best")
    assert model.config.enhancement == (extra[1] if extra[0] == "--enhancement" else "sge")


def test_two_process_gloo_ddp(toy_precomp, tiny_bert, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "model.train",
           "--data", str(toy_precomp), "--text-backbone", tiny_bert, "--out", str(out), *ARGS,
           "--epochs", "1", "--max-steps-per-epoch", "4", "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1
    state = torch.load(out / "last.pt", weights_only=True)
    # every step enqueues the keys gathered from both processes: 4 steps x 2 x 32 keys, modulo K
    assert int(state["moco"]["queue_ptr"][0]) == (4 * 2 * 32) % 128
    USERModel.from_pretrained(out / "best")


def test_cached_text_features_equal_the_live_backbone(toy_precomp, tiny_bert, tmp_path):
    from model.data import CaptionPairs, collate_pairs, frozen_text_features, load_split
    from conftest import make_config

    model = USERModel(make_config(tiny_bert, freeze_text_backbone=True))
    model.load_text_backbone_weights()
    model.train()
    assert not model.txt_enc.bert.training  # a frozen backbone stays in eval mode
    split = load_split(toy_precomp, "dev")
    features = frozen_text_features(model, split.captions, tmp_path)
    again = frozen_text_features(model, split.captions, tmp_path)  # from the disk cache
    assert len(list(tmp_path.glob("text-*.npz"))) == 1 and (again.values == features.values).all()
    pairs = CaptionPairs(split, model.tokenizer, model.config.max_text_length, text_features=features)
    regions, region_lengths, ids, lengths, clip, hidden = collate_pairs([pairs[i] for i in range(8)])
    model.eval()
    with torch.no_grad():
        live = model.txt_enc(ids, lengths)
        cached = model.txt_enc(ids, lengths, hidden)
    assert torch.allclose(live, cached, atol=2e-3)  # float16 storage


def test_learning_rate_schedules():
    step = train.parse_args(["--data", "d", "--out", "o", "--epochs", "4", "--lr-update", "2"])
    assert [train.lr_factor(step, epoch, 5, 10) for epoch in range(4)] == [1.0, 1.0, 0.1, 0.1]
    cosine = train.parse_args(["--data", "d", "--out", "o", "--epochs", "2", "--lr-schedule", "cosine", "--warmup-steps", "4"])
    factors = [train.lr_factor(cosine, epoch, step, 10) for epoch in range(2) for step in range(10)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]  # linear warm-up
    assert all(a >= b for a, b in zip(factors[3:], factors[4:]))  # then never rises
    assert factors[-1] < 0.01 and abs(factors[4 + 8] - 0.5) < 1e-9  # half-way through the decay: 0.5


def test_batched_pairs_equal_collated_items(toy_precomp, tiny_bert, tmp_path):
    """The fast batch path (precomputed text features, one gather per array) gives what collating
    the items one by one gives."""
    from model.data import CaptionPairs, collate_pairs, frozen_text_features, load_split
    from conftest import make_config

    split = load_split(toy_precomp, "train")
    model = USERModel(make_config(tiny_bert, freeze_text_backbone=True)).eval()
    features = frozen_text_features(model, split.captions)
    slow = CaptionPairs(split, model.tokenizer, model.config.max_text_length, text_features=features)
    indices = [7, 0, 23, 11, 5]
    regions, region_lengths, input_ids, text_lengths, clip, hidden = collate_pairs([slow[i] for i in indices])
    fast = slow.batch(indices)
    assert fast[2] is None  # nothing tokenized
    for expected, got in zip((regions, region_lengths, text_lengths, hidden), (fast[0], fast[1], fast[3], fast[5])):
        assert torch.equal(expected, got)
