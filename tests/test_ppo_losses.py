"""PPO-chapter losses (alignlib/losses/ppo.py): identities, gradient signs, and parity with TRL 1.16.

TRL 1.16 has no PPOTrainer (it moved out of the package), so the PPO pieces are
checked against their defining equations; GRPO and RLOO losses are checked by
calling TRL's own `_compute_loss` methods on a stand-in trainer object that
holds only the attributes those methods read.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from alignlib.losses.group import (
    grpo_advantages,
    grpo_loss,
    p3o_loss,
    pf_filter,
    raft_select,
    rloo_advantages,
    rloo_loss,
    superhf_loss,
)
from alignlib.losses.ppo import (
    AdaptiveKLController,
    FixedKLController,
    RunningMeanStd,
    clip_rewards,
    entropy_from_logits,
    gae,
    kl_penalty,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    token_rewards,
    whiten,
)


def right_padded_mask(lengths, T):
    return (torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).float()


# --------------------------------------------------------------------------- KL estimators and token rewards


def test_kl_estimators_sign_and_unbiasedness_on_a_categorical():
    """k3 ≥ 0 everywhere; E_π[k1] = E_π[k3] = KL(π‖π_ref); k2 is biased but ≥ 0.

    (Chapter 3, beside eq-ppo-reward.)"""
    g = torch.Generator().manual_seed(0)
    p_logits, q_logits = torch.randn(20, generator=g), torch.randn(20, generator=g)
    logp, logq = torch.log_softmax(p_logits, -1), torch.log_softmax(q_logits, -1)
    exact = (logp.exp() * (logp - logq)).sum()
    y = torch.multinomial(logp.exp(), 400_000, replacement=True, generator=g)
    k1, k2, k3 = (kl_penalty(logp[y], logq[y], e) for e in ("k1", "k2", "k3"))
    assert (k3 >= 0).all() and (k2 >= 0).all() and (k1 < 0).any()
    assert k1.mean().item() == pytest.approx(exact.item(), abs=0.02)
    assert k3.mean().item() == pytest.approx(exact.item(), abs=0.02)
    # the exact expectations, without sampling noise
    p = logp.exp()
    assert (p * kl_penalty(logp, logq, "k3")).sum().item() == pytest.approx(exact.item(), abs=1e-5)
    assert (p * kl_penalty(logp, logq, "k1")).sum().item() == pytest.approx(exact.item(), abs=1e-5)
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(logp, logq, "k4")


def test_k3_nonnegative_for_extreme_ratios():
    lp = torch.tensor([-30.0, -1e-3, 0.0, -5.0])
    ref = torch.tensor([0.0, -1e-3 + 1e-7, -40.0, -5.0])
    assert (kl_penalty(lp, ref, "k3") >= 0).all()


def test_token_rewards_layout_and_telescoping():
    """Score lands on the last real token; Σ_t r_t = score − β·ρ_old(y) with k1 (METHODS 2.1 check d)."""
    B, T = 3, 6
    mask = right_padded_mask([6, 2, 4], T)
    lp, ref = -torch.rand(B, T), -torch.rand(B, T)
    scores = torch.tensor([1.0, -2.0, 0.5])
    rew, kl = token_rewards(scores, lp, ref, mask, kl_coef=0.1)
    assert rew[0, 5] == pytest.approx((scores[0] - 0.1 * (lp[0, 5] - ref[0, 5])).item())
    assert rew[1, 1] == pytest.approx((scores[1] - 0.1 * (lp[1, 1] - ref[1, 1])).item())
    assert (rew * (1 - mask) == 0).all() and (kl * (1 - mask) == 0).all()
    rho = ((lp - ref) * mask).sum(-1)
    assert torch.allclose(rew.sum(-1), scores - 0.1 * rho, atol=1e-6)


def test_token_rewards_rejects_empty_rows():
    mask = right_padded_mask([3, 0], 4)
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        token_rewards(torch.zeros(2), torch.zeros(2, 4), torch.zeros(2, 4), mask, 0.1)


def test_whiten_statistics_and_shift_mean():
    mask = right_padded_mask([5, 3], 5)
    x = torch.randn(2, 5) * 3 + 2
    w = whiten(x, mask)
    assert masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6)
    n = mask.sum()
    assert (masked_mean(w**2, mask) * n / (n - 1)).item() == pytest.approx(1.0, abs=1e-5)
    assert (w * (1 - mask) == 0).all()
    ws = whiten(x, mask, shift_mean=False)
    assert masked_mean(ws, mask).item() == pytest.approx(masked_mean(x, mask).item(), abs=1e-5)


def test_running_mean_std_matches_batch_statistics_and_round_trips():
    g = torch.Generator().manual_seed(1)
    chunks = [torch.randn(n, generator=g) * 2 + 1 for n in (5, 1, 17, 3)]
    rms = RunningMeanStd()
    for c in chunks:
        rms.update(c)
    allx = torch.cat(chunks).double()
    assert rms.mean == pytest.approx(allx.mean().item(), abs=1e-12)
    assert rms.std == pytest.approx(allx.std().item(), abs=1e-12)
    other = RunningMeanStd()
    other.load_state_dict(rms.state_dict())
    x = torch.randn(4)
    assert torch.equal(other.normalize(x), rms.normalize(x))
    assert torch.allclose(rms.normalize(x, subtract_mean=False) * (rms.std + rms.eps), x)
    const = RunningMeanStd()
    const.update(torch.full((10,), 3.0))
    assert torch.isfinite(const.normalize(torch.tensor([3.0, 4.0]))).all()  # std 0 guarded by eps
    assert torch.equal(clip_rewards(torch.tensor([-20.0, 3.0, 12.0])), torch.tensor([-10.0, 3.0, 10.0]))


# --------------------------------------------------------------------------- GAE


def brute_force_gae(rewards, values, lengths, gamma, lam):
    """Â_t = Σ_{l≥0} (γλ)^l δ_{t+l}, row by row, from the definition (no recursion)."""
    adv = torch.zeros_like(rewards)
    for b, L in enumerate(lengths):
        v = values[b, :L].tolist() + [0.0]
        deltas = [rewards[b, t].item() + gamma * v[t + 1] - v[t] for t in range(L)]
        for t in range(L):
            adv[b, t] = sum((gamma * lam) ** l * deltas[t + l] for l in range(L - t))
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 0.0)])
def test_gae_matches_brute_force(gamma, lam):
    lengths, T = [7, 3, 1, 5], 7
    mask = right_padded_mask(lengths, T)
    g = torch.Generator().manual_seed(2)
    rewards, values = torch.randn(4, T, generator=g), torch.randn(4, T, generator=g)
    adv, ret = gae(rewards, values, mask, gamma, lam)
    expected = brute_force_gae(rewards, values, lengths, gamma, lam)
    assert torch.allclose(adv, expected, atol=1e-5)
    assert torch.allclose(ret, (expected + values) * mask, atol=1e-5)
    assert (adv * (1 - mask) == 0).all()  # garbage on padding does not leak in


def test_gae_identities_monte_carlo_and_td0():
    """λ=γ=1: Â_t = Σ_{k≥t} r_k − V_t; λ=0: Â_t = δ_t (METHODS A13)."""
    lengths, T = [5, 2], 5
    mask = right_padded_mask(lengths, T)
    rewards, values = torch.randn(2, T), torch.randn(2, T)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    future = (rewards * mask).flip(-1).cumsum(-1).flip(-1)
    assert torch.allclose(adv, (future - values) * mask, atol=1e-5)
    assert torch.allclose(ret, future * mask, atol=1e-5)
    adv0, _ = gae(rewards, values, mask, gamma=0.9, lam=0.0)
    vnext = torch.cat([values[:, 1:] * mask[:, 1:], torch.zeros(2, 1)], 1)
    assert torch.allclose(adv0, (rewards + 0.9 * vnext - values) * mask, atol=1e-6)


def test_gae_rejects_left_padding():
    with pytest.raises(ValueError, match="right-padded"):
        gae(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([[0.0, 1.0, 1.0]]))


# --------------------------------------------------------------------------- PPO losses


def test_policy_loss_at_ratio_one_is_minus_mean_advantage():
    mask = right_padded_mask([4, 2], 4)
    lp = -torch.rand(2, 4)
    adv = torch.randn(2, 4)
    loss, metrics = ppo_policy_loss(lp, lp.clone(), adv, mask)
    assert loss.item() == pytest.approx(-masked_mean(adv, mask).item(), abs=1e-6)
    assert metrics["policy/clipfrac_avg"] == 0.0 and metrics["policy/approxkl_avg"] == 0.0


def test_policy_loss_gradient_vanishes_only_on_the_clipped_side():
    """Â>0, ρ>1+ε and Â<0, ρ<1−ε: zero gradient; the opposite sides keep the unclipped gradient −Â·ρ/N."""
    old = torch.zeros(1, 4)
    log_ratio = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5]]))
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    lp = (old + log_ratio).requires_grad_(True)
    loss, metrics = ppo_policy_loss(lp, old, adv, torch.ones(1, 4), clip_range=0.2)
    loss.backward()
    ratio = log_ratio.exp()
    expected = torch.tensor([[0.0, 0.0, 1.0 * 1.5 / 4, -1.0 * 0.5 / 4]])
    assert torch.allclose(lp.grad, expected, atol=1e-6)
    assert torch.allclose(-adv * ratio / 4 * torch.tensor([[0, 0, 1, 1.0]]), expected, atol=1e-6)
    assert metrics["policy/clipfrac_avg"] == pytest.approx(0.5)


def test_policy_loss_is_a_token_mean_over_the_batch():
    mask = right_padded_mask([1, 3], 3)
    adv = torch.tensor([[4.0, 9.0, 9.0], [1.0, 1.0, 1.0]])
    loss, _ = ppo_policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), adv, mask)
    assert loss.item() == pytest.approx(-(4 + 3) / 4)  # not −(4 + 1)/2, the per-sequence mean


def test_value_loss_clipping():
    old = torch.tensor([[0.0, 0.0, 0.0]])
    ret = torch.tensor([[1.0, 1.0, 1.0]])
    v = torch.tensor([[0.1, 0.5, 2.0]], requires_grad=True)
    loss, metrics = ppo_value_loss(v, old, ret, torch.ones(1, 3), clip_range_value=0.2)
    # token 0 is inside the clip range: ½(v−R)². Token 1 moved toward R past the range: the clipped value 0.2 is
    # further from R, so its loss (0.2−1)² counts and the gradient is 0. Token 2 overshoots R: (2−1)² > (0.2−1)²,
    # so the unclipped term counts and still pulls v back.
    expected = 0.5 * ((0.1 - 1) ** 2 + (0.2 - 1) ** 2 + (2.0 - 1) ** 2) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert v.grad[0, 1] == 0.0 and v.grad[0, 0] < 0 and v.grad[0, 2] > 0
    assert metrics["val/clipfrac_avg"] == pytest.approx(1 / 3)
    unclipped, _ = ppo_value_loss(v, old, ret, torch.ones(1, 3), clip_range_value=None)
    assert unclipped.item() == pytest.approx(0.5 * ((0.1 - 1) ** 2 + 0.25 + 1.0) / 3, abs=1e-6)


def test_entropy_matches_trl_and_limits():
    from trl.trainer.utils import entropy_from_logits as trl_entropy

    logits = torch.randn(2, 5, 11)
    mask = right_padded_mask([5, 2], 5)
    ours = entropy_from_logits(logits, mask)
    assert (ours - trl_entropy(logits) * mask).abs().max().item() < 1e-5
    assert entropy_from_logits(torch.zeros(1, 1, 8))[0, 0].item() == pytest.approx(math.log(8), abs=1e-6)


def test_kl_controllers():
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10_000)
    assert ctl.update(kl=12.0, n_steps=100) > 0.2  # KL above target → larger coefficient
    before = ctl.value
    assert ctl.update(kl=1e6, n_steps=100) == pytest.approx(before * (1 + 0.2 * 100 / 10_000))  # error clipped
    assert ctl.update(kl=1.0, n_steps=100) < ctl.state_dict()["value"] / (1 - 0.2 * 100 / 10_000) + 1e-12
    restored = AdaptiveKLController()
    restored.load_state_dict(ctl.state_dict())
    assert restored.state_dict() == ctl.state_dict()
    assert restored.update(3.0, 10) == ctl.update(3.0, 10)
    fixed = FixedKLController(0.05)
    assert fixed.update(100.0, 10) == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.05


# --------------------------------------------------------------------------- RLOO and GRPO


def test_rloo_baseline_excludes_self():
    scores = torch.tensor([1.0, 2.0, 6.0, -1.0, -1.0, 5.0])
    adv = rloo_advantages(scores, k=3)
    assert adv[0].item() == pytest.approx(1.0 - (2.0 + 6.0) / 2)
    assert torch.allclose(adv.view(2, 3).mean(1), torch.zeros(2), atol=1e-6)
    g = scores.view(2, 3)
    assert torch.allclose(adv.view(2, 3), 3 / 2 * (g - g.mean(1, keepdim=True)))
    n = rloo_advantages(scores, k=3, normalize=True)
    assert n.mean().item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        rloo_advantages(scores, k=1)


def test_grpo_advantages_group_normalised():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(24, generator=g) * 5 + 2
    adv = grpo_advantages(scores, k=6).view(4, 6)
    assert torch.allclose(adv.mean(1), torch.zeros(4), atol=1e-5)
    assert torch.allclose(adv.std(1), torch.ones(4), atol=1e-3)  # eps = 1e-4 on a std of ~5
    batch = grpo_advantages(scores, k=6, scale="batch")
    assert batch.std().item() < 1.0 + 1e-3
    none = grpo_advantages(scores, k=6, scale="none").view(4, 6)
    assert torch.allclose(none, scores.view(4, 6) - scores.view(4, 6).mean(1, keepdim=True))
    flat = grpo_advantages(torch.ones(6), k=3)
    assert (flat == 0).all()  # identical rewards: no signal, no NaN


class _Accelerator:
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def _stand_in_trainer(**attrs):
    """The attributes TRL 1.16's GRPO/RLOO `_compute_loss` read, on a bare object (one process, no accumulation)."""
    base = {
        "aux_loss_enabled": False, "top_entropy_quantile": 1.0, "off_policy_mask_threshold": None,
        "use_vllm": False, "vllm_importance_sampling_correction": False, "model": SimpleNamespace(training=True),
        "current_gradient_accumulation_steps": 1, "accelerator": _Accelerator(), "_entropy_bonus_enabled": False,
        "_metrics": {"train": defaultdict(list), "eval": defaultdict(list)},
        "args": SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
    }
    base.update(attrs)
    return SimpleNamespace(**base)


def _rollout(B=4, T=6, seed=4, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    mask = right_padded_mask(torch.randint(1, T + 1, (B,), generator=g).tolist(), T)
    lp = -torch.rand(B, T, generator=g) * 3
    old = lp + spread * torch.randn(B, T, generator=g)
    ref = lp + 0.3 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    return lp, old, ref, adv, mask


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo", "dr_grpo"])
@pytest.mark.parametrize("level,beta,eps_high", [("token", 0.0, 0.2), ("token", 0.04, 0.28), ("sequence", 0.04, 0.2)])
def test_grpo_loss_matches_trl(loss_type, level, beta, eps_high):
    from trl.trainer.grpo_trainer import GRPOTrainer

    lp, old, ref, adv, mask = _rollout(spread=0.3 if level == "token" else 1.0)
    B, T = mask.shape
    lp_trl, lp_ours = lp.clone().requires_grad_(True), lp.clone().requires_grad_(True)
    trainer = _stand_in_trainer(
        loss_type=loss_type, importance_sampling_level=level, beta=beta, epsilon_low=0.2, epsilon_high=eps_high,
        max_completion_length=T,
        _get_per_token_logps_and_entropies=lambda *a, **k: (lp_trl, torch.ones(B, T), None),
    )
    inputs = {
        "prompt_ids": torch.zeros(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask, "advantages": adv,
        "old_per_token_logps": old, "ref_per_token_logps": ref, "num_items_in_batch": mask.sum(),
    }
    trl_loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    ours, metrics = grpo_loss(lp_ours, old, adv, mask, ref_logprobs=ref, beta=beta, epsilon=0.2,
                              epsilon_high=eps_high, loss_type=loss_type, importance_sampling_level=level,
                              max_completion_length=T)
    trl_loss.backward()
    ours.backward()
    assert abs(ours.item() - trl_loss.item()) < 1e-6
    assert (lp_ours.grad - lp_trl.grad).abs().max().item() < 1e-6
    assert metrics["clip_ratio/region_mean"] > 0  # the clipped branch is exercised, not just ratio ≈ 1
    for name in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean") + (("kl",) if beta else ()):
        assert metrics[name] == pytest.approx(trainer._metrics["train"][name][-1], abs=1e-6)


def test_rloo_loss_matches_trl():
    from trl.trainer.rloo_trainer import RLOOTrainer

    lp, old, _, _, mask = _rollout(B=6, seed=5)
    adv = rloo_advantages(torch.randn(6), k=3)
    B, T = mask.shape
    lp_trl, lp_ours = lp.clone().requires_grad_(True), lp.clone().requires_grad_(True)
    trainer = _stand_in_trainer(epsilon_low=0.2, epsilon_high=0.2,
                                _get_per_token_logps_and_entropies=lambda *a, **k: (lp_trl, torch.ones(B, T), None))
    inputs = {
        "prompt_ids": torch.zeros(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask, "advantages": adv,
        "old_logps": (old * mask).sum(1),
    }
    trl_loss = RLOOTrainer._compute_loss(trainer, None, inputs)
    ours, metrics = rloo_loss(lp_ours, old, adv, mask)
    trl_loss.backward()
    ours.backward()
    assert abs(ours.item() - trl_loss.item()) < 1e-6
    assert (lp_ours.grad - lp_trl.grad).abs().max().item() < 1e-6
    assert metrics["clip_ratio/region_mean"] == pytest.approx(trainer._metrics["train"]["clip_ratio/region_mean"][-1])


def test_grpo_loss_on_policy_gradient_is_advantage_weighted_score_function():
    """At lp = lp_old, β = 0, 'grpo' type: ∇ = −A_b m_t / (|y_b| B) per token."""
    lp, _, _, adv, mask = _rollout(seed=6)
    lp = lp.requires_grad_(True)
    loss, _ = grpo_loss(lp, lp.detach(), adv, mask, loss_type="grpo")
    loss.backward()
    expected = -adv.unsqueeze(1) * mask / mask.sum(1, keepdim=True) / mask.shape[0]
    assert torch.allclose(lp.grad, expected, atol=1e-6)


# --------------------------------------------------------------------------- P3O, RAFT, SuperHF, PF-PPO


def test_p3o_shift_invariance_and_zero_gradient_for_identical_pair():
    g = torch.Generator().manual_seed(7)
    l1, l2 = torch.randn(5, generator=g), torch.randn(5, generator=g)
    o1, o2 = l1 + 0.1 * torch.randn(5, generator=g), l2 + 0.5 * torch.randn(5, generator=g)
    s1, s2 = torch.randn(5, generator=g), torch.randn(5, generator=g)
    base, _ = p3o_loss(l1, o1, l2, o2, s1, s2)
    c = torch.randn(5, generator=g) * 10
    shifted, _ = p3o_loss(l1, o1, l2, o2, s1 + c, s2 + c)
    assert shifted.item() == pytest.approx(base.item(), abs=1e-5)
    same = l1.clone().requires_grad_(True)
    loss, _ = p3o_loss(same, o1, same, o1, s1, s2)
    loss.backward()
    assert same.grad.abs().max().item() < 1e-7


def test_p3o_unclipped_gradient_is_pairwise_policy_gradient():
    l1 = torch.tensor([0.0, 0.0], requires_grad=True)
    l2 = torch.tensor([0.0, 0.0], requires_grad=True)
    s1, s2 = torch.tensor([3.0, -1.0]), torch.tensor([1.0, 1.0])
    loss, _ = p3o_loss(l1, torch.zeros(2), l2, torch.zeros(2), s1, s2)
    loss.backward()
    half_gap = (s1 - s2) / 2
    assert torch.allclose(l1.grad, -half_gap / 2) and torch.allclose(l2.grad, half_gap / 2)


def test_raft_select():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, -1.0, 2.0, 0.0, 1.0])
    assert raft_select(scores, k=4, keep=0.25).tolist() == [1, 5]
    assert raft_select(scores, k=4, keep=0.5).tolist() == [1, 2, 5, 7]
    assert raft_select(scores, k=4, keep=0.25, strategy="top").tolist() == [5, 7]  # global: group 0 gets none
    assert raft_select(scores, k=4, keep=1.0).tolist() == list(range(8))
    kept = raft_select(scores, k=4, keep=0.5, strategy="top")
    assert scores[kept].mean() >= scores.mean()


def test_superhf_loss_is_sft_at_init_and_kl_positive_after():
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 4, 7, generator=g)
    labels = torch.randint(0, 7, (2, 4), generator=g)
    mask = right_padded_mask([4, 2], 4)
    loss, metrics = superhf_loss(logits, logits.clone(), labels, mask, kl_coef=0.5)
    assert metrics["objective/kl"] == pytest.approx(0.0, abs=1e-6)
    nll = torch.nn.functional.cross_entropy(logits[mask.bool()], labels[mask.bool()])
    assert loss.item() == pytest.approx(nll.item(), abs=1e-5)
    moved, m2 = superhf_loss(logits + torch.randn(2, 4, 7, generator=g), logits, labels, mask, kl_coef=0.5)
    assert m2["objective/kl"] > 0 and moved.item() == pytest.approx(m2["loss/sft"] + 0.5 * m2["objective/kl"], abs=1e-5)


def test_pf_filter_strategies():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 2.0, -1.0, 0.0, 1.0])
    assert pf_filter(scores, k=4, strategy="best_of_n").tolist() == [1, 4]
    assert pf_filter(scores, k=4, strategy="best_worst").tolist() == [0, 1, 4, 5]
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        idx = pf_filter(scores, k=4, strategy="best_random", generator=gen)
        assert len(idx) == 4 and len(set(idx.tolist())) == 4 and {1, 4} <= set(idx.tolist())
        assert all(i // 4 == j for i, j in zip(idx.tolist(), [0, 0, 1, 1]))
    assert pf_filter(torch.zeros(3), k=3, strategy="best_worst").tolist() == [0, 1]


def test_a_prompt_dependent_reward_shift_changes_ppo_but_not_p3o():
    """Issue 4's property: adding c(x) to both completions' rewards leaves P3O's gradient unchanged and moves a
    PPO-style gradient (sequence-level advantage = reward, no baseline: each completion is its own trajectory)."""
    from alignlib.losses.ppo import ppo_policy_loss

    g = torch.Generator().manual_seed(3)
    old1, old2 = torch.randn(6, generator=g), torch.randn(6, generator=g)
    s1, s2 = torch.randn(6, generator=g), torch.randn(6, generator=g)
    c = 5.0 * torch.randn(6, generator=g)

    def grads(loss_fn, shift):
        l1 = (old1 + 0.05 * torch.randn(6, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
        l2 = (old2 + 0.05 * torch.randn(6, generator=torch.Generator().manual_seed(2))).requires_grad_(True)
        loss_fn(l1, l2, s1 + shift, s2 + shift).backward()
        return torch.cat([l1.grad, l2.grad])

    def p3o(l1, l2, r1, r2):
        return p3o_loss(l1, old1, l2, old2, r1, r2)[0]

    def ppo(l1, l2, r1, r2):
        mask = torch.ones(12, 1)
        return ppo_policy_loss(torch.cat([l1, l2])[:, None], torch.cat([old1, old2])[:, None],
                               torch.cat([r1, r2])[:, None], mask)[0]

    assert torch.allclose(grads(p3o, 0.0), grads(p3o, c), atol=1e-6)
    assert (grads(ppo, 0.0) - grads(ppo, c)).abs().max().item() > 1e-2
