"""Offline policy gradient on sequences with rewards: A-LoL (Baheti et al., "Leftover Lunch").

A-LoL treats a whole completion as one action of a bandit and takes a policy-gradient
step on *fixed* data (sampled earlier from π_ref), with an importance weight:

    ∇J(θ) = E_{y∼π_ref}[ A_ref(x, y) · (π_θ(y|x) / π_ref(y|x)) · ∇ log π_θ(y|x) ],
    A_ref(x, y) = R(x, y) − V_ref(x),   V_ref(x) = E_{y∼π_ref}[R(x, y)].

Two practical changes make it A-LoL (chapter 3b, eq-alol):
  * rows with A ≤ 0 are dropped (A⁺ = max(0, A)): only "leftover" data better than the
    reference's average are learned from, and the negative-gradient terms that push
    probability mass onto unseen text disappear;
  * the sequence ratio is detached and clipped to [1 − ε, 1 + ε] (ε = 0.9 in the paper's code).

    L(θ) = −(1/N) Σ_i A⁺_i · clip(sg[π_θ(y_i)/π_ref(y_i)], 1 − ε, 1 + ε) · log π_θ(y_i | x_i)  (eq-alol)

ε = 0 gives w = 1, advantage-weighted SFT (the paper's "ref-free" variant); A⁺ = 1 and w = 1
give plain sequence-level NLL (SFT).
"""

from __future__ import annotations

import torch


def group_mean_advantages(rewards: torch.Tensor, leave_one_out: bool = False) -> torch.Tensor:
    """Return A = R − V̂(x) [B, K] with V̂(x) the mean reward of the prompt's K reference samples.

    rewards: [B, K], K samples of π_ref per prompt. A Monte-Carlo stand-in for A-LoL's
    learned value head V_ref(x). leave_one_out: V̂ excludes the sample itself (RLOO's baseline;
    then A = K/(K−1) · (R − mean)), which needs K ≥ 2.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, K] (K samples per prompt), got shape {tuple(rewards.shape)}")
    k = rewards.shape[1]
    if leave_one_out and k < 2:
        raise ValueError("a leave-one-out baseline needs K ≥ 2 samples per prompt")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf; check the reward function or drop those rows")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred * (k / (k - 1)) if leave_one_out else centred


def a_lol_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    advantages: torch.Tensor,
    epsilon: float = 0.9,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Return the A-LoL loss (eq-alol) and metrics.

    policy_logps, reference_logps: [N] sequence log-probs ℓ(y) = Σ_t log π(y_t | x, y_<t)
    of offline completions under π_θ and π_ref. advantages: [N], A = R − V_ref(x) (any sign;
    clamped at 0 here). epsilon: clip range of the detached ratio, in [0, 1]; 0 turns the
    importance weight off (advantage-weighted SFT). The mean is over all N rows, so the
    dropped rows (A ≤ 0) dilute the step as in the paper's code (it samples only positive
    rows; scale the learning rate by the kept fraction to match it).
    """
    if not (policy_logps.shape == reference_logps.shape == advantages.shape) or policy_logps.dim() != 1:
        raise ValueError(f"policy_logps, reference_logps and advantages must be 1-D of one length, got "
                         f"{tuple(policy_logps.shape)}, {tuple(reference_logps.shape)}, {tuple(advantages.shape)}")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon (the ratio's clip range) must be in [0, 1], got {epsilon}")
    if not torch.isfinite(advantages).all():
        raise ValueError("advantages contain NaN or inf; check the rewards")
    positive = advantages.clamp(min=0.0)
    log_ratio = (policy_logps - reference_logps).detach()
    weight = log_ratio.exp().clamp(1.0 - epsilon, 1.0 + epsilon)
    loss = -(positive * weight * policy_logps).mean()
    kept = advantages > 0
    return loss, {
        "loss": loss.item(),
        "kept_fraction": kept.float().mean().item(),
        "mean_positive_advantage": positive[kept].mean().item() if kept.any() else 0.0,
        "ratio": log_ratio.exp().mean().item(),
        "ratio_clipped": ((weight != log_ratio.exp()) & kept).float().mean().item(),
    }


__all__ = ["group_mean_advantages", "a_lol_loss"]
