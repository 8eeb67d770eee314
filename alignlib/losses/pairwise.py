"""Pairwise preference losses over sequence log-probabilities (the DPO family).

Every function here is pure: it takes log-probabilities of the chosen (y_w)
and rejected (y_l) completions under the policy and the reference, shape [B]
each, and returns (loss, metrics). The DPO chapter adds IPO, f-DPO, ... as
siblings with the same signature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Return the DPO loss (mean over the batch) and TRL-named metrics.

    With ρ(y) = ℓ_θ(y) − ℓ_ref(y) and margin h = ρ(y_w) − ρ(y_l):

        L_DPO = − log σ(β h)                                     (eq-dpo-loss)

    (Rafailov et al. 2023, eq. 7). `label_smoothing` ε gives the conservative
    variant − (1 − ε) log σ(β h) − ε log σ(−β h), as in TRL's "sigmoid" loss.
    Defaults β = 0.1, ε = 0 are TRL's `DPOConfig` defaults.

    Shapes: all four inputs [B]; returns a scalar loss.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_logratio = policy_chosen_logps - ref_chosen_logps
    rejected_logratio = policy_rejected_logps - ref_rejected_logps
    logits = beta * (chosen_logratio - rejected_logratio)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    chosen_rewards = beta * chosen_logratio.detach()
    rejected_rewards = beta * rejected_logratio.detach()
    metrics = {
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
    }
    return losses.mean(), metrics
