"""Supervised fine-tuning: negative log-likelihood of the completion tokens."""

from __future__ import annotations

import torch


def sft_loss(
    token_logps: torch.Tensor, mask: torch.Tensor, num_tokens: float | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Return the mean NLL per completion token, and metrics.

    L_SFT = − Σ_{b,t} m_bt log π(y_bt | x_b, y_b,<t) / N,   N = Σ_{b,t} m_bt      (eq-sft-loss)

    token_logps, mask: [B, T−1] (from `logprobs.sequence_logprobs`).
    Averaging over tokens (not sequences) matches `transformers`' causal-LM loss.
    `num_tokens` overrides N: the training loop passes the global batch's
    token count per micro-batch, so that splitting a batch into micro-batches
    or processes does not change the loss (transformers' `num_items_in_batch`).
    """
    n_tokens = mask.sum().clamp(min=1.0) if num_tokens is None else torch.tensor(float(num_tokens))
    loss = -(token_logps * mask).sum() / n_tokens
    return loss, {"loss": loss.item(), "tokens": mask.sum().item()}
