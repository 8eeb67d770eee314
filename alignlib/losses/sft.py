"""Supervised fine-tuning: negative log-likelihood of the completion tokens."""

from __future__ import annotations

import torch


def sft_loss(token_logps: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Return the mean NLL per completion token, and metrics.

    L_SFT = − Σ_{b,t} m_bt log π(y_bt | x_b, y_b,<t) / Σ_{b,t} m_bt      (eq-sft-loss)

    token_logps, mask: [B, T−1] (from `logprobs.sequence_logprobs`).
    Averaging over tokens (not sequences) matches `transformers`' causal-LM loss.
    """
    n_tokens = mask.sum().clamp(min=1.0)
    loss = -(token_logps * mask).sum() / n_tokens
    return loss, {"loss": loss.item(), "tokens": n_tokens.item()}
