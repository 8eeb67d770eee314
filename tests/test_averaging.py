"""Weight averaging (alignlib.averaging): endpoints exact, linearity, soups, per-layer α and clear errors."""

from __future__ import annotations

import copy

import pytest
import torch

from alignlib.averaging import (average_state_dicts, block_alphas, interpolate_models, interpolate_state_dicts,
                                layer_index, soup)


@pytest.fixture(scope="module")
def two_models(pocket_reviews):
    model, _ = pocket_reviews
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    return model, other


def test_endpoints_are_exact_and_the_midpoint_is_the_mean(two_models):
    a, b = two_models
    sa, sb = a.state_dict(), b.state_dict()
    for alpha, expected in ((0.0, sa), (1.0, sb)):
        out = interpolate_state_dicts(sa, sb, alpha)
        assert all(torch.equal(out[k], expected[k]) for k in sa)
    mid = interpolate_state_dicts(sa, sb, 0.5)
    for k in sa:
        assert mid[k].dtype == sa[k].dtype and mid[k].shape == sa[k].shape
        torch.testing.assert_close(mid[k], (sa[k] + sb[k]) / 2)


def test_interpolated_model_is_new_and_leaves_inputs_alone(two_models):
    a, b = two_models
    before = {k: v.clone() for k, v in a.state_dict().items()}
    m = interpolate_models(a, b, 0.3)
    assert m is not a and all(torch.equal(before[k], v) for k, v in a.state_dict().items())
    k = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(m.state_dict()[k], 0.7 * a.state_dict()[k] + 0.3 * b.state_dict()[k])


def test_soup_of_copies_is_the_model_and_weights_are_checked(two_models):
    a, b = two_models
    same = soup([a, copy.deepcopy(a)])
    assert all(torch.allclose(v, a.state_dict()[k]) for k, v in same.state_dict().items())
    mid = average_state_dicts([a.state_dict(), b.state_dict()])
    ref = interpolate_state_dicts(a.state_dict(), b.state_dict(), 0.5)
    assert all(torch.allclose(mid[k], ref[k], atol=1e-7) for k in mid)
    with pytest.raises(ValueError, match="sum to 1"):
        average_state_dicts([a.state_dict(), b.state_dict()], [0.7, 0.7])


def test_per_layer_alphas(two_models):
    a, b = two_models
    assert layer_index("model.layers.3.mlp.up_proj.weight") == 3 and layer_index("lm_head.weight") is None
    alphas = block_alphas(a, [0.0, 1.0])  # 4 blocks: 0–1 keep `a`, 2–3 take `b`; the rest gets the mean 0.5
    assert alphas["model.layers.1.self_attn.q_proj.weight"] == 0.0
    assert alphas["model.layers.2.self_attn.q_proj.weight"] == 1.0
    assert alphas["model.embed_tokens.weight"] == 0.5
    out = interpolate_state_dicts(a.state_dict(), b.state_dict(), alphas)
    assert torch.equal(out["model.layers.0.mlp.up_proj.weight"], a.state_dict()["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(out["model.layers.3.mlp.up_proj.weight"], b.state_dict()["model.layers.3.mlp.up_proj.weight"])
    with pytest.raises(ValueError, match="no entry"):
        interpolate_state_dicts(a.state_dict(), b.state_dict(), {"lm_head.weight": 0.5})
    with pytest.raises(ValueError, match="alphas"):
        block_alphas(a, [0.1] * 9)


def test_mismatched_models_give_clear_errors(two_models):
    a, b = two_models
    sa, sb = a.state_dict(), b.state_dict()
    k = "model.norm.weight"
    with pytest.raises(ValueError, match="shape"):
        interpolate_state_dicts(sa, {**sb, k: torch.ones(3)}, 0.5)
    with pytest.raises(ValueError, match="dtype"):
        interpolate_state_dicts(sa, {**sb, k: sb[k].double()}, 0.5)
    with pytest.raises(ValueError, match="different parameters"):
        interpolate_state_dicts(sa, {n: v for n, v in sb.items() if n != k}, 0.5)
    ints = {"steps": torch.tensor([1, 2])}
    assert torch.equal(interpolate_state_dicts(ints, {"steps": torch.tensor([1, 2])}, 0.5)["steps"], ints["steps"])
    with pytest.raises(ValueError, match="non-float"):
        interpolate_state_dicts(ints, {"steps": torch.tensor([1, 3])}, 0.5)
