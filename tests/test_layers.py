import pytest
import torch

from model.enhancement import ClipGuidedEnhancement, SelfGuidedEnhancement, enhance_regions
from model.layers import GPO, MLP, l2norm, length_mask, positional_encoding_1d
from model.towers import ImageEncoder
from conftest import make_config


def test_positional_encoding_matches_formula():
    pe = positional_encoding_1d(8, 5)
    assert pe.shape == (5, 8)
    assert torch.allclose(pe[3, 2], torch.sin(torch.tensor(3 / 10000 ** (2 / 8))))
    assert torch.allclose(pe[3, 3], torch.cos(torch.tensor(3 / 10000 ** (2 / 8))))


def test_gpo_ignores_padding_and_weights_sum_to_one():
    torch.manual_seed(0)
    gpo = GPO(32, 32)
    features = torch.randn(3, 7, 10)
    lengths = torch.tensor([7, 4, 1])
    pooled, weights = gpo(features, lengths)
    assert pooled.shape == (3, 10) and weights.shape == (3, 7, 1)
    assert torch.allclose(weights.sum(1), torch.ones(3, 1), atol=1e-6)
    assert torch.all(weights[1, 4:] == 0) and torch.all(weights[2, 1:] == 0)
    # garbage in the padding changes nothing
    noisy = features.clone()
    noisy[1, 4:] = 1e3
    assert torch.allclose(gpo(noisy, lengths)[0], pooled, atol=1e-6)
    # a single valid position pools to that position
    assert torch.allclose(pooled[2], features[2, 0], atol=1e-6)


def test_gpo_is_permutation_invariant():
    torch.manual_seed(1)
    gpo = GPO()
    features = torch.randn(2, 6, 4)
    lengths = torch.tensor([6, 6])
    permuted = features[:, torch.randperm(6)]
    assert torch.allclose(gpo(features, lengths)[0], gpo(permuted, lengths)[0], atol=1e-6)


def test_mlp_shapes_and_unused_final_batchnorm():
    mlp = MLP(12, 8, 16)
    assert mlp(torch.randn(2, 5, 12)).shape == (2, 5, 16)
    assert mlp.bns[1].num_features == 16  # kept loadable, never applied


def test_enhancement_attention_is_unit_norm_and_masked():
    regions = torch.randn(2, 5, 6)
    guide = l2norm(torch.randn(2, 6))
    mask = length_mask(torch.tensor([5, 3]), 5)
    enhanced, attention = enhance_regions(regions, guide, mask)
    assert torch.allclose(attention.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.all(attention[1, 3:] < 1e-6)
    assert torch.allclose(enhanced - regions, attention.unsqueeze(-1) * guide.unsqueeze(1))


def test_sge_guide_is_a_unit_convex_combination():
    torch.manual_seed(0)
    sge = SelfGuidedEnhancement(6, 4).eval()
    regions = torch.randn(3, 4, 6)
    guide, weights = sge(regions, torch.ones(3, 4, dtype=torch.bool))
    assert torch.allclose(weights.sum(1), torch.ones(3), atol=1e-6)
    assert torch.allclose(guide.norm(dim=1), torch.ones(3), atol=1e-5)
    expected = l2norm((weights.unsqueeze(-1) * regions).sum(1))
    assert torch.allclose(guide, expected, atol=1e-6)


def test_cge_guide_is_projected_clip_embedding(tiny_bert):
    cge = ClipGuidedEnhancement(12, 6)
    clip = torch.randn(2, 12)
    assert torch.allclose(cge(clip), l2norm(cge.proj(clip)))
    encoder = ImageEncoder(make_config(tiny_bert, enhancement="cge", clip_dim=12)).eval()
    with pytest.raises(ValueError, match="clip_embeds"):
        encoder(torch.randn(2, 6, 24), torch.tensor([6, 6]))
    out = encoder.encode(torch.randn(2, 6, 24), torch.tensor([6, 6]), clip)
    assert out.embedding.shape == (2, 16) and out.enhance_attention.shape == (2, 6)
    assert out.region_weights is None


@pytest.mark.parametrize("enhancement", ["sge", "cge", "none"])
def test_image_tower_output_is_normalised(tiny_bert, enhancement):
    encoder = ImageEncoder(make_config(tiny_bert, enhancement=enhancement, clip_dim=12)).eval()
    out = encoder(torch.randn(4, 6, 24), torch.tensor([6, 6, 5, 2]), torch.randn(4, 12))
    assert out.shape == (4, 16)
    assert torch.allclose(out.norm(dim=1), torch.ones(4), atol=1e-5)


def test_text_tower_uses_attention_mask(tiny_model):
    ids, lengths = tiny_model.tokenize(["a red circle", "a much longer caption about a blue square"])
    assert ids[0, lengths[0]:].eq(0).all()
    alone = tiny_model.encode_token_ids(ids[:1, : lengths[0]], lengths[:1])
    padded = tiny_model.encode_token_ids(ids, lengths)[:1]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_gpo_inference_table_matches_the_gru_and_follows_weight_changes():
    torch.manual_seed(0)
    gpo = GPO(16, 8).eval()
    lengths = torch.tensor([3, 7, 1, 7, 5])
    with torch.no_grad():
        fresh = gpo._compute_weights(lengths)
        assert torch.allclose(gpo.pool_weights(lengths), fresh, atol=1e-6)
        assert torch.allclose(gpo.pool_weights(torch.tensor([2])), gpo._compute_weights(torch.tensor([2])), atol=1e-6)
        assert torch.allclose(gpo.pool_weights(torch.tensor([12, 4])), gpo._compute_weights(torch.tensor([12, 4])), atol=1e-6)
        gpo.linear.weight.mul_(-1)  # an in-place change (as load_state_dict makes) must rebuild the table
        assert torch.allclose(gpo.pool_weights(lengths), gpo._compute_weights(lengths), atol=1e-6)
        assert not torch.allclose(gpo.pool_weights(lengths), fresh, atol=1e-3)
    gpo.load_state_dict(GPO(16, 8).state_dict())
    with torch.no_grad():
        assert torch.allclose(gpo.pool_weights(lengths), gpo._compute_weights(lengths), atol=1e-6)


def test_dropout_keeps_the_expected_share_and_scale():
    from model.enhancement import Dropout

    torch.manual_seed(0)
    dropout = Dropout(0.4)
    x = torch.ones(200, 500)
    y = dropout(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.6) < 0.01
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.6))
    assert torch.equal(dropout.eval()(x), x)
