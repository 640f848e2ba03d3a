import numpy as np
import pytest
import torch

from model.evaluation import five_fold_metrics, i2t, i2t_ranks, retrieval_metrics, t2i, t2i_ranks


def brute_force_ranks(sims):
    n = sims.shape[0]
    i2t_r, t2i_r = [], []
    for i in range(n):
        order = list(np.argsort(-sims[i], kind="stable"))
        i2t_r.append(min(order.index(c) for c in range(5 * i, 5 * i + 5)))
    for c in range(5 * n):
        order = list(np.argsort(-sims[:, c], kind="stable"))
        t2i_r.append(order.index(c // 5))
    return np.array(i2t_r), np.array(t2i_r)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranks_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 12
    sims = rng.normal(size=(n, 5 * n))
    sims[np.arange(n), 5 * np.arange(n) + rng.integers(0, 5, n)] += rng.uniform(0, 2, n)  # some signal
    want_i2t, want_t2i = brute_force_ranks(sims)
    assert np.array_equal(i2t_ranks(sims).numpy(), want_i2t)
    assert np.array_equal(t2i_ranks(sims).numpy(), want_t2i)
    metrics = i2t(sims)
    assert metrics["r1"] == pytest.approx(100 * np.mean(want_i2t < 1))
    assert metrics["r5"] == pytest.approx(100 * np.mean(want_i2t < 5))
    assert metrics["medr"] == np.floor(np.median(want_i2t)) + 1
    assert metrics["meanr"] == pytest.approx(want_i2t.mean() + 1)
    assert t2i(sims)["r10"] == pytest.approx(100 * np.mean(want_t2i < 10))


def test_perfect_and_reversed_scores():
    n = 10
    owner = np.repeat(np.arange(n), 5)
    perfect = (owner[None, :] == np.arange(n)[:, None]).astype(float)
    m = retrieval_metrics(perfect)
    assert m["rsum"] == 600 and m["i2t_medr"] == 1 and m["t2i_meanr"] == 1
    worst = 1 - perfect
    assert retrieval_metrics(worst)["i2t_r1"] == 0
    assert t2i(worst)["medr"] == n  # ground truth is always last of n images


def test_five_fold_is_mean_over_folds():
    rng = np.random.default_rng(3)
    sims = torch.from_numpy(rng.normal(size=(20, 100)))
    folds = [retrieval_metrics(sims[i * 4:(i + 1) * 4, i * 20:(i + 1) * 20]) for i in range(5)]
    got = five_fold_metrics(sims, fold_size=4)
    assert got["rsum"] == pytest.approx(np.mean([f["rsum"] for f in folds]))
