"""Reward-model losses and ensemble aggregation (pure functions over reward tensors).

Shapes: a batch of B preference pairs gives `chosen_rewards` r_w and
`rejected_rewards` r_l, each [B]; an ensemble of K reward models gives [K, B].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_rewards_coefficient: float | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Return the Bradley–Terry reward-model loss (mean over the batch) and TRL-named metrics.

    With Δ = r_w − r_l − m (m: optional per-pair margin, [B]):

        L_BT = − (1 − ε) log σ(Δ) − ε log σ(−Δ)  [+ c · mean((r_w + r_l)²)]     (eq-bt-loss)

    ε = 0 is the plain BT likelihood (Bradley & Terry 1952; TRL's RewardTrainer,
    margin as in Llama 2); ε > 0 is the conservative, label-smoothed form that
    Secrets of RLHF II uses for low-confidence pairs; c is TRL's
    `center_rewards_coefficient` (Eisenstein et al. 2023, eq. 2), which pins
    the free additive constant of BT rewards near 0.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(f"chosen {tuple(chosen_rewards.shape)} and rejected {tuple(rejected_rewards.shape)} rewards differ in shape")
    delta = chosen_rewards - rejected_rewards
    if margin is not None:
        delta = delta - margin
    losses = -(1 - label_smoothing) * F.logsigmoid(delta) - label_smoothing * F.logsigmoid(-delta)
    loss = losses.mean()
    if center_rewards_coefficient is not None:
        loss = loss + center_rewards_coefficient * torch.mean((chosen_rewards + rejected_rewards) ** 2)
    with torch.no_grad():
        gap = chosen_rewards - rejected_rewards
        metrics = {"loss": loss.item(), "accuracy": (gap > 0).float().mean().item(), "margin": gap.mean().item(),
                   "mean_reward": torch.cat([chosen_rewards, rejected_rewards]).mean().item()}
    return loss, metrics


def ensemble_reward(rewards: torch.Tensor, mode: str = "mean", uwo_lambda: float = 0.5,
                    robust_lambda: float = 0.5) -> torch.Tensor:
    """Return the aggregate reward [B] of an ensemble's rewards [K, B].

        mean:    R̄ = (1/K) Σ_k r_k
        wco:     R = min_k r_k                              (worst-case optimisation)
        uwo:     R = R̄ − λ · Var_k(r_k)                      (uncertainty-weighted optimisation)
        robust:  R = λ_r · R̄ + (1 − λ_r) · min_k r_k        (nominal + worst case)   (eq-robust-reward)

    (Coste et al., "Reward Model Ensembles Help Mitigate Overoptimization";
    "robust" is the per-sample form of the reward-robust objective of Yan et al.,
    "Reward-Robust RLHF in LLMs", which mixes nominal and minimum reward; λ_r = 1
    is the mean, λ_r = 0 is WCO.)
    Var is the population variance (divide by K), as in the paper's best-of-n
    code; it is 0 for K = 1, so UWO then equals the single reward (the
    unbiased estimator would give NaN). λ = 0.5 is that code's best-of-n default.
    """
    if rewards.dim() != 2:
        raise ValueError(f"expected rewards of shape [K, B], got {tuple(rewards.shape)}")
    if mode == "mean":
        return rewards.mean(0)
    if mode == "wco":
        return rewards.min(0).values
    if mode == "uwo":
        return rewards.mean(0) - uwo_lambda * rewards.var(0, unbiased=False)
    if mode == "robust":
        if not 0.0 <= robust_lambda <= 1.0:
            raise ValueError(f"robust_lambda must be in [0, 1], got {robust_lambda}")
        return robust_lambda * rewards.mean(0) + (1 - robust_lambda) * rewards.min(0).values
    raise ValueError(f"unknown ensemble mode {mode!r}; use 'mean', 'wco', 'uwo' or 'robust'")


def preference_strength(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (mean û [B], std σ̂ [B]) of the ensemble's reward gaps d_k = r_k(y_w) − r_k(y_l).

    Inputs [K, B] from K reward models (Secrets of RLHF II): û < 0 marks a pair
    the ensemble believes is mislabelled, small |û| a weak preference, large σ̂
    a pair the members disagree on. σ̂ uses the population std (0 for K = 1).
    """
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.dim() != 2:
        raise ValueError("expected chosen and rejected rewards of the same shape [K, B]")
    gaps = chosen_rewards - rejected_rewards
    return gaps.mean(0), gaps.std(0, unbiased=False)
