"""f-DPG (alignlib.losses.fdpg): generators, the gradient identities, the target as a fixed point, and a run of the loop."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from alignlib.config import TrainConfig
from alignlib.loop import train
from alignlib.losses.fdpg import DIVERGENCES, f_generator, f_prime, fdpg_loss, tilted_log_target

F_PRIME_AT_ONE = {"reverse_kl": 1.0, "forward_kl": -1.0, "js": 0.0, "tv": 0.0}


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_generators_vanish_at_one_derivatives_match_and_are_convex(divergence):
    one = torch.zeros(1, dtype=torch.float64)
    assert f_generator(divergence, one).item() == pytest.approx(0.0, abs=1e-12)
    assert f_prime(divergence, one).item() == pytest.approx(F_PRIME_AT_ONE[divergence], abs=1e-12)
    # f' is the derivative of f in u (away from TV's kink), and is non-decreasing (f convex)
    u = torch.tensor([0.05, 0.3, 0.7, 1.4, 3.0, 20.0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(f_generator(divergence, u.log()).sum(), u)
    assert torch.allclose(grad, f_prime(divergence, u.detach().log()), atol=1e-10)
    grid = torch.linspace(-6, 6, 201, dtype=torch.float64)
    assert (f_prime(divergence, grid).diff() >= -1e-12).all()
    # the textbook definitions, written independently of the module
    x = u.detach()
    expected = {"reverse_kl": x * x.log(), "forward_kl": -x.log(),
                "js": x * x.log() - (1 + x) * ((1 + x) / 2).log(), "tv": 0.5 * (x - 1).abs()}[divergence]
    assert torch.allclose(f_generator(divergence, x.log()), expected, atol=1e-10)


def _toy(seed=0, prompts=3, vocab=6, beta=0.5):
    """A bandit per prompt: π_ref, rewards and the exact tilted target over `vocab` outcomes."""
    g = torch.Generator().manual_seed(seed)
    ref_logits = torch.randn(prompts, vocab, generator=g, dtype=torch.float64)
    rewards = torch.randn(prompts, vocab, generator=g, dtype=torch.float64)
    log_ref = ref_logits.log_softmax(-1)
    log_p = (log_ref + rewards / beta).log_softmax(-1)
    return log_ref, rewards, log_p, beta


def _sample(logits, k, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(logits.softmax(-1), k, replacement=True, generator=g)  # [B, k]


def _surrogate(theta, log_ref, rewards, beta, idx, divergence):
    k = idx.shape[1]
    logps = theta.log_softmax(-1).gather(1, idx).reshape(-1)
    return fdpg_loss(logps, log_ref.gather(1, idx).reshape(-1), rewards.gather(1, idx).reshape(-1), k, beta,
                     divergence)


def test_reverse_kl_is_kl_regularised_reinforce_divided_by_beta():
    """Reverse-KL f-DPG's gradient = (1/β) × REINFORCE of E[r] − β·KL(π‖π_ref), same group-mean baseline."""
    log_ref, rewards, _, beta = _toy(seed=1)
    theta = torch.randn(log_ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2),
                        requires_grad=True)
    idx = _sample(theta.detach(), 5, seed=3)
    loss, _ = _surrogate(theta, log_ref, rewards, beta, idx, "reverse_kl")
    (g_fdpg,) = torch.autograd.grad(loss, theta)
    # REINFORCE with the KL-penalised reward r − β·log(π/π_ref), detached, and the group mean as baseline
    logps = theta.log_softmax(-1).gather(1, idx)
    shaped = rewards.gather(1, idx) - beta * (logps.detach() - log_ref.gather(1, idx))
    adv = shaped - shaped.mean(1, keepdim=True)
    (g_rl,) = torch.autograd.grad(-(adv * logps).mean(), theta)
    assert g_fdpg.abs().max() > 1e-3
    assert torch.allclose(beta * g_fdpg, g_rl, atol=1e-12)


def test_forward_kl_rewards_are_normalised_importance_weights():
    """Forward KL: R_i = p/π_θ estimated as k·w_i/Σ_j w_j with w = P/π_θ (DPG's weights); A_i = R_i − 1."""
    log_ref, rewards, _, beta = _toy(seed=4)
    k = 4
    theta = torch.randn(log_ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    idx = _sample(theta, k, seed=6)
    logps = theta.log_softmax(-1).gather(1, idx).reshape(-1).requires_grad_(True)
    ref, r = log_ref.gather(1, idx).reshape(-1), rewards.gather(1, idx).reshape(-1)
    loss, _ = fdpg_loss(logps, ref, r, k, beta, "forward_kl")
    (grad,) = torch.autograd.grad(loss, logps)
    advantages = -grad * logps.numel()                     # L = −mean(A·ℓ), so ∂L/∂ℓ_i = −A_i/N
    w = (ref + r / beta - logps.detach()).exp().view(-1, k)  # P/π_θ
    expected = k * w / w.sum(1, keepdim=True) - 1.0
    assert torch.allclose(advantages.view(-1, k), expected, atol=1e-10)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_the_target_is_a_fixed_point_and_z_does_not_matter(divergence):
    """At π_θ = p every sampled group gives zero gradient; shifting log P by a constant per prompt changes nothing."""
    log_ref, rewards, log_p, beta = _toy(seed=7)
    theta = log_p.clone().requires_grad_(True)
    for seed in range(3):
        loss, metrics = _surrogate(theta, log_ref, rewards, beta, _sample(log_p, 6, seed), divergence)
        (grad,) = torch.autograd.grad(loss, theta)
        assert grad.abs().max() < 1e-12, (seed, grad)
        assert metrics["f_divergence"] == pytest.approx(0.0, abs=1e-9)
    # away from the target: the gradient is non-zero and invariant to the unknown normaliser
    theta = torch.zeros_like(log_p, requires_grad=True)
    idx = _sample(theta.detach(), 6, seed=9)
    k = idx.shape[1]
    logps = theta.log_softmax(-1).gather(1, idx).reshape(-1)
    target = tilted_log_target(log_ref.gather(1, idx).reshape(-1), rewards.gather(1, idx).reshape(-1), beta)
    shift = torch.tensor([3.0, -40.0, 7.5], dtype=torch.float64).repeat_interleave(k)
    grads = [torch.autograd.grad(fdpg_loss(logps, target, target, k, beta, divergence, log_target=t)[0], theta,
                                 retain_graph=True)[0] for t in (target, target + shift)]
    assert grads[0].abs().max() > 1e-4 and torch.allclose(grads[0], grads[1], atol=1e-10)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_expected_gradient_is_the_divergence_gradient(divergence):
    """With many samples the surrogate's gradient approaches ∇_θ D_f(π_θ ‖ p) of the exact divergence; Ẑ → Z."""
    log_ref, rewards, log_p, beta = _toy(seed=10, prompts=2, vocab=5)
    theta = torch.randn(log_p.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(11),
                        requires_grad=True)
    loss, metrics = _surrogate(theta, log_ref, rewards, beta, _sample(theta.detach(), 200_000, seed=12), divergence)
    (g_mc,) = torch.autograd.grad(loss, theta)
    log_pi = theta.log_softmax(-1)
    # D_f = Σ_y p(y) f(π(y)/p(y)) per prompt; the loss averages over the B prompts, so compare with the mean
    exact = (log_p.exp() * f_generator(divergence, log_pi - log_p)).sum(-1).mean()
    (g_exact,) = torch.autograd.grad(exact, theta)
    cos = torch.nn.functional.cosine_similarity(g_mc.flatten(), g_exact.flatten(), dim=0)
    ratio = g_mc.norm() / g_exact.norm()
    true_log_z = torch.logsumexp(log_ref + rewards / beta, -1).mean()
    print(f"{divergence}: cos {cos:.4f}, |g_mc|/|g_exact| {ratio:.4f}, log Ẑ {metrics['log_z']:.4f} vs {true_log_z:.4f}")
    assert cos > 0.99 and abs(ratio - 1) < 0.05
    assert metrics["log_z"] == pytest.approx(true_log_z.item(), abs=0.02)


def test_bad_input_is_refused_with_a_clear_error():
    lp = torch.zeros(8)
    with pytest.raises(ValueError, match="unknown f-DPG divergence 'kl'.*reverse_kl, forward_kl, js, tv"):
        fdpg_loss(lp, lp, lp, 4, 0.1, "kl")
    with pytest.raises(ValueError, match="samples_per_prompt must be ≥ 2"):
        fdpg_loss(lp, lp, lp, 1, 0.1)
    with pytest.raises(ValueError, match=r"\[B·k\] with k=3"):
        fdpg_loss(lp, lp, lp, 3, 0.1)
    with pytest.raises(ValueError, match="same shape"):
        fdpg_loss(lp, lp, torch.zeros(4), 4, 0.1)
    with pytest.raises(ValueError, match="beta > 0"):
        fdpg_loss(lp, lp, lp, 4, 0.0)
    with pytest.raises(ValueError, match="must be finite"):
        fdpg_loss(lp, lp, lp, 4, 0.1, log_target=torch.full((8,), -math.inf))
    with pytest.raises(ValueError, match="unknown fdpg_divergence 'chi2'; choose one of reverse_kl"):
        TrainConfig(method="f_dpg", fdpg_divergence="chi2")
    with pytest.raises(ValueError, match="--method f_dpg needs beta > 0"):
        TrainConfig(method="f_dpg", beta=0.0)


def test_f_dpg_runs_in_the_loop_and_resumes_exactly(tmp_path, interrupt_and_resume):
    """A short f_dpg run (JS) through `train` is finite, logs its estimates, and resumes from a checkpoint exactly."""
    cfg = TrainConfig(method="f_dpg", fdpg_divergence="js", output_dir=str(tmp_path / "straight"), max_steps=4,
                      save_steps=2, learning_rate=2e-4, per_device_train_batch_size=2, samples_per_prompt=4,
                      beta=0.1, max_new_tokens=12, progress=False, logging_steps=0)
    reference = train(cfg)
    assert len(reference.history) == 4
    for row in reference.history:
        assert all(math.isfinite(v) for v in row.values()), row
        assert 0.25 - 1e-6 <= row["ess"] <= 1.0 + 1e-6
    resumed = interrupt_and_resume(dataclasses.replace(cfg, output_dir=str(tmp_path / "interrupted")), "f_dpg", 3)
    worst = max(abs(a[k] - b[k]) for a, b in zip(resumed.history, reference.history) for k in a)
    weights = max((p - q).abs().max().item() for p, q in zip(resumed.model.parameters(),
                                                             reference.model.parameters()))
    assert len(resumed.history) == 4 and worst <= 1e-6 and weights <= 1e-6


def test_kl_estimates_to_the_tilted_target_match_the_exact_values():
    """On an enumerable bandit, the sample estimates of KL(π‖p), KL(p‖π), E_p[r], KL(p‖π_ref), H(p) match exact sums."""
    from alignlib.losses.fdpg import tilted_target_kls

    log_ref, rewards, log_p, beta = _toy(seed=13, prompts=3, vocab=6, beta=0.7)
    log_pi = torch.randn(log_p.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(14)).log_softmax(-1)
    ref_idx, pol_idx = _sample(log_ref, 100_000, seed=15), _sample(log_pi, 100_000, seed=16)
    est = tilted_target_kls(beta, rewards.gather(1, ref_idx), log_ref.gather(1, ref_idx), log_pi.gather(1, ref_idx),
                            rewards.gather(1, pol_idx), log_pi.gather(1, pol_idx), log_ref.gather(1, pol_idx))
    p, pi = log_p.exp(), log_pi.exp()
    exact = {"reverse_kl": (pi * (log_pi - log_p)).sum(1).mean(), "forward_kl": (p * (log_p - log_pi)).sum(1).mean(),
             "target_gold": (p * rewards).sum(1).mean(), "target_kl_ref": (p * (log_p - log_ref)).sum(1).mean(),
             "target_entropy": -(p * log_p).sum(1).mean(),
             "log_z": torch.logsumexp(log_ref + rewards / beta, 1).mean()}
    for key, value in exact.items():
        assert est[key] == pytest.approx(value.item(), abs=0.02), (key, est[key], value.item())
    assert 0 < est["ess"] <= 1
    with pytest.raises(ValueError, match="one shape"):
        tilted_target_kls(beta, rewards, log_ref, log_ref[:, :3], rewards, log_ref, log_ref)


def test_f_dpg_moves_the_policy_towards_the_tilted_target(tmp_path, reviews_world):
    """Two seeds: 40 steps of JS f-DPG to p ∝ π_ref·exp(gold/β) raise the gold reward above the SFT model's,
    beyond both runs' 95% intervals (the direction the target asks for; its own gold is far higher)."""
    from alignlib.evaluate import evaluate_policy

    for seed in (0, 1):
        cfg = TrainConfig(method="f_dpg", fdpg_divergence="js", seed=seed, output_dir=str(tmp_path / str(seed)),
                          max_steps=40, save_steps=0, learning_rate=3e-4,
                          per_device_train_batch_size=4, samples_per_prompt=4, beta=0.1, max_new_tokens=24,
                          progress=False, logging_steps=0)
        result = train(cfg)
        ev = evaluate_policy(result.model, result.reference, result.tokenizer, reviews_world, samples_per_prompt=8,
                             max_new_tokens=24, seed=3)
        print(f"seed {seed}: gold {ev.ref_gold_reward:+.3f} → {ev.gold_reward:+.3f} ± {ev.gold_reward_ci:.3f}, "
              f"KL {ev.kl:.2f}")
        assert ev.gold_reward - ev.gold_reward_ci > ev.ref_gold_reward + 0.1
