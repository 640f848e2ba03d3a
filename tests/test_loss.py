import math

import torch

from model.loss import UTO


def naive_batch_term(img, txt, mu, gamma):
    """The formula of the paper, written with loops over float64 numbers."""
    n = img.shape[0]
    s = [[float(img[i] @ txt[j]) for j in range(n)] for i in range(n)]
    masked = [[0.0 if i == j else s[i][j] for j in range(n)] for i in range(n)]
    sp = [[math.exp(mu * (masked[i][j] - gamma)) for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        column = sum(sp[j][i] for j in range(n))
        row = sum(sp[i][j] for j in range(n))
        total += math.log(1 + column) / mu + math.log(1 + row) / mu - math.log(1 + max(s[i][i], 0.0))
    return total / n


def naive_queue_side(q, k, queue, mu, gamma):
    total = 0.0
    for i in range(q.shape[0]):
        pos = float(q[i] @ k[i])
        negs = sum(math.exp(mu * (float(q[i] @ queue[:, c]) - gamma)) for c in range(queue.shape[1]))
        total += math.log(1 + negs) / mu - math.log(1 + max(pos, 0.0))
    return total / q.shape[0]


def unit(*shape, dim=-1):
    return torch.nn.functional.normalize(torch.randn(*shape, dtype=torch.float64), dim=dim)


def test_batch_term_matches_hand_computation():
    torch.manual_seed(0)
    img, txt = unit(6, 8), unit(6, 8)
    for mu, gamma in [(90.0, 0.5), (10.0, 0.2), (1.0, 0.0)]:
        got = UTO(mu, gamma)(img, txt).item()
        assert abs(got - naive_batch_term(img, txt, mu, gamma)) < 1e-9


def test_batch_term_two_by_two_by_hand():
    # S = [[1, 0], [0, 1]] (orthonormal pairs): every S' entry is exp(-μγ), positives are 1.
    img = torch.eye(2, dtype=torch.float64)
    mu, gamma = 2.0, 0.5
    expected = 2 * math.log(1 + 2 * math.exp(-mu * gamma)) / mu - math.log(2)
    assert abs(UTO(mu, gamma)(img, img).item() - expected) < 1e-12


def test_queue_term_matches_hand_computation():
    torch.manual_seed(1)
    v_q, t_q, v_k, t_k = unit(4, 8), unit(4, 8), unit(4, 8), unit(4, 8)
    v_queue, t_queue = unit(8, 10, dim=0), unit(8, 10, dim=0)
    uto = UTO(90.0, 0.5)
    expected = naive_queue_side(v_q, t_k, t_queue, 90.0, 0.5) + naive_queue_side(t_q, v_k, v_queue, 90.0, 0.5)
    assert abs(uto.queue(v_q, t_k, t_q, v_k, v_queue, t_queue).item() - expected) < 1e-9


def test_loss_is_finite_and_prefers_aligned_pairs():
    torch.manual_seed(2)
    img = unit(16, 32).float()
    aligned = UTO()(img, img)
    shuffled = UTO()(img, img[torch.randperm(16)])
    assert torch.isfinite(aligned) and aligned < shuffled
    # near-duplicate negatives at μ=90 would overflow a naive exp-sum in float32; ours stays finite
    same = torch.ones(64, 8) / math.sqrt(8)
    assert torch.isfinite(UTO()(same, same))


def test_gradients_flow_to_both_modalities():
    img = unit(5, 8).float().requires_grad_()
    txt = unit(5, 8).float().requires_grad_()
    UTO()(img, txt).backward()
    assert img.grad.abs().sum() > 0 and txt.grad.abs().sum() > 0
