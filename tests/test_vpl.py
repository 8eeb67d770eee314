"""VPL (Poddar et al. 2024; chapter 9, sec-ch9-vpl): the loss's identities and signs, the latent's sphere, bad input, and the effect on gold."""

from __future__ import annotations

import math

import pytest
import torch

from alignlib.losses.reward import bradley_terry_loss
from alignlib.vpl import (
    VPLModel,
    compare_by_context,
    kl_to_standard_normal,
    rows_of,
    train_vpl,
    user_pairs,
    vpl_loss,
)
from alignlib.worlds import get_world

D, LATENT = 28, 4


@pytest.fixture(scope="module")
def world():
    return get_world("two_populations")


def _batch(seed=0, users=3, pairs=5):
    g = torch.Generator().manual_seed(seed)
    chosen = torch.randn(users, pairs, D, generator=g)
    rejected = torch.randn(users, pairs, D, generator=g)
    mask = torch.ones(users, pairs, dtype=torch.bool)
    mask[0, -2:] = False  # a user with fewer pairs (padding)
    return chosen, rejected, mask


def test_decoder_blind_to_z_gives_the_bradley_terry_loss():
    """With the decoder's weights on z set to 0, VPL's loss (w_KL = 0) is BT on r(y) whatever the context or ε."""
    torch.manual_seed(0)
    model = VPLModel(D, LATENT, hidden_dim=16)
    with torch.no_grad():
        model.decoder[0].weight[:, D:] = 0.0
    chosen, rejected, mask = _batch()
    context = torch.zeros_like(mask)
    context[:, :2] = True
    targets = mask & ~context
    losses = []
    for seed in range(3):
        mu, log_var = model.encode(chosen, rejected, context if seed < 2 else mask)  # two different contexts
        z = model.latent(mu, log_var, sample=True, generator=torch.Generator().manual_seed(seed))
        loss, _ = vpl_loss(model.reward(chosen, z), model.reward(rejected, z), targets, mu, log_var, kl_weight=0.0)
        losses.append(loss)
    z0 = torch.zeros(chosen.shape[0], LATENT)
    bt, _ = bradley_terry_loss(model.reward(chosen, z0)[targets], model.reward(rejected, z0)[targets])
    for loss in losses:
        assert loss.item() == pytest.approx(bt.item(), abs=1e-6)
    # and no gradient reaches the encoder: z carries no information into the loss
    losses[0].backward()
    assert all(p.grad is None or p.grad.abs().max() < 1e-12 for p in model.pair_encoder.parameters())


def test_kl_is_zero_only_at_the_prior_and_enters_with_its_weight():
    zeros = torch.zeros(2, LATENT)
    assert kl_to_standard_normal(zeros, zeros).abs().max().item() == 0.0
    g = torch.Generator().manual_seed(1)
    mu, log_var = torch.randn(50, LATENT, generator=g).clamp(-1, 1), torch.randn(50, LATENT, generator=g).clamp(-1, 1)
    assert (kl_to_standard_normal(mu, log_var) > 0).all()
    assert (kl_to_standard_normal(zeros + 0.3, zeros) > 0).all() and (kl_to_standard_normal(zeros, zeros - 0.5) > 0).all()
    # closed form against torch.distributions
    q = torch.distributions.Normal(mu, torch.exp(0.5 * log_var))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    assert torch.allclose(kl_to_standard_normal(mu, log_var), torch.distributions.kl_divergence(q, p).sum(-1), atol=1e-6)
    rw, rl = torch.randn(50, 3, generator=g), torch.randn(50, 3, generator=g)
    mask = torch.ones(50, 3, dtype=torch.bool)
    with_kl, m = vpl_loss(rw, rl, mask, mu, log_var, kl_weight=0.1)
    without, _ = vpl_loss(rw, rl, mask, mu, log_var, kl_weight=0.0)
    assert with_kl.item() - without.item() == pytest.approx(0.1 * kl_to_standard_normal(mu, log_var).mean().item(), abs=1e-6)
    assert m["kl"] == pytest.approx(kl_to_standard_normal(mu, log_var).mean().item(), rel=1e-6)


def test_latent_lies_on_the_sphere_and_eval_is_deterministic():
    torch.manual_seed(0)
    model = VPLModel(D, LATENT, hidden_dim=16)
    chosen, rejected, mask = _batch(seed=2)
    mu, log_var = model.encode(chosen, rejected, mask)
    assert mu.abs().max() <= 1.0 and log_var.abs().max() <= 1.0  # clamped to [−1, 1]
    z_eval = [model.latent(mu, log_var, sample=False) for _ in range(2)]
    assert torch.equal(z_eval[0], z_eval[1])
    assert torch.allclose(z_eval[0], mu / mu.norm(dim=-1, keepdim=True) * math.sqrt(LATENT), atol=1e-6)  # z = μ, normalised
    z_train = model.latent(mu, log_var, sample=True, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(z_train, z_eval[0])
    for z in (z_eval[0], z_train):
        assert torch.allclose(z.norm(dim=-1), torch.full((z.shape[0],), math.sqrt(LATENT)), atol=1e-5)
    # padding does not change a user's posterior
    mu_pad, _ = model.encode(chosen[:1, :3], rejected[:1, :3], mask[:1, :3])
    assert torch.allclose(mu_pad, mu[:1], atol=1e-6)


def test_raising_the_chosen_reward_lowers_the_loss():
    g = torch.Generator().manual_seed(3)
    rw = torch.randn(4, 3, generator=g, requires_grad=True)
    rl = torch.randn(4, 3, generator=g, requires_grad=True)
    mask = torch.tensor([[1, 1, 0]] * 4, dtype=torch.bool)
    mu, log_var = torch.zeros(4, LATENT), torch.zeros(4, LATENT)
    loss, _ = vpl_loss(rw, rl, mask, mu, log_var, kl_weight=0.01)
    loss.backward()
    assert (rw.grad[mask] < 0).all() and (rl.grad[mask] > 0).all()
    assert (rw.grad[~mask] == 0).all() and (rl.grad[~mask] == 0).all()  # padded slots do not count


def test_bad_input_is_refused_with_a_clear_message(world):
    mu = torch.zeros(2, LATENT)
    with pytest.raises(ValueError, match="users, targets"):
        vpl_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool), mu, mu, 0.01)
    with pytest.raises(ValueError, match="users, d"):
        vpl_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), mu[:1], mu[:1], 0.01)
    with pytest.raises(ValueError, match="no target pair"):
        vpl_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool), mu, mu, 0.01)
    with pytest.raises(ValueError, match="kl_weight"):
        vpl_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), mu, mu, -1.0)
    model = VPLModel(D, LATENT, hidden_dim=8)
    chosen, rejected, mask = _batch()
    with pytest.raises(ValueError, match="empty context"):
        model.encode(chosen, rejected, mask & False)
    with pytest.raises(ValueError, match="do not match"):
        model.encode(chosen, rejected[:, :2], mask)
    rows = world.annotated_pairs(6, 3, seed=0)
    with pytest.raises(ValueError, match="unknown annotator 99"):
        rows_of(rows, 99)
    with pytest.raises(ValueError, match="annotator"):
        user_pairs(world, [{k: v for k, v in r.items() if k != "annotator"} for r in rows])
    with pytest.raises(ValueError, match="at least 2 pairs"):
        train_vpl(world, world.annotated_pairs(4, 1, seed=0), steps=1)
    fit = train_vpl(world, rows, steps=2)
    with pytest.raises(ValueError, match="empty context"):
        fit.predict([], rows[:2])
    with pytest.raises(ValueError, match="several annotators"):
        fit.predict(rows, rows[:2])
    p = fit.predict(rows_of(rows, 0), rows[:4])
    assert p.shape == (4,) and ((p > 0) & (p < 1)).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_vpl_serves_both_groups_on_conflicting_pairs_where_one_reward_serves_the_majority(world, seed):
    """Must-hold (on gold): on held-out pairs where the groups' gold orders are opposite, single BT is right for the
    formal majority and wrong for the casual minority; VPL, reading 8 labelled pairs of a new user, is right for both
    groups well above chance."""
    rows = world.annotated_pairs(200, 8, seed=seed)
    result = compare_by_context(world, rows, ks=[1, 8], seed=seed, n_test_users=200, n_queries=300)
    acc = {(a["method"], a["k"], a["kind"], a["group"]): a["accuracy"] for a in result["accuracy"]}
    print(f"seed {seed}: users per group {result['users']}, queries {result['queries']}; " +
          ", ".join(f"{m} k={k} {kind[:4]} g{g}: {v:.3f}" for (m, k, kind, g), v in sorted(acc.items())))
    bt_major, bt_minor = acc[("single BT", 8, "conflicting", 0)], acc[("single BT", 8, "conflicting", 1)]
    vpl_major, vpl_minor = acc[("VPL", 8, "conflicting", 0)], acc[("VPL", 8, "conflicting", 1)]
    assert bt_major > 0.8 and bt_minor < 0.3
    assert vpl_major > 0.8 and vpl_minor > 0.6
    assert vpl_minor - bt_minor > 0.4
    # on pairs the groups agree on, personalisation costs little
    assert min(acc[("VPL", 8, "agreeing", g)] for g in (0, 1)) > 0.8
