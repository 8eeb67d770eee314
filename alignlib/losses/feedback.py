"""Losses for learning from language feedback: CUT's contrastive unlikelihood and its hindsight flags.

CUT ("Reasons to Reject? Aligning LMs with Judgments", Xu et al.) trains on
responses together with a judgement written in words. Tokens the judgement
marks as inappropriate get an *unlikelihood* term, which pushes their
probability down; every other token gets ordinary likelihood (chapter 7):

    ℓ_t = −w · log(1 − p_t)   if u_t = 1 (marked)
    ℓ_t = −log p_t            otherwise
    L_CUT = Σ_{b,t} m_bt ℓ_bt / N,   N = Σ_{b,t} m_bt         (eq-cut-loss)

with p_t = π(y_t | x, y_<t), m the completion mask and u ≤ m the unlikelihood
mask. Which tokens are marked comes from the judgement: in the paper, by the
*hindsight ratio* p(y_t | x, judgement) / p(y_t | x) > τ (a token the model finds
much likelier once it has read the criticism is what the criticism is about),
`hindsight_flags`; in a world whose critic points at words, from the critic.
"""

from __future__ import annotations

import math

import torch


def log1m_exp(logp: torch.Tensor) -> torch.Tensor:
    """Return log(1 − exp(logp)) for logp ≤ 0, stably (−inf-free: logp is clamped just below 0)."""
    logp = logp.clamp(max=-1e-6)
    # two regimes (Mächler 2012): log(−expm1(a)) near 0, log1p(−exp(a)) far from it
    return torch.where(logp > -math.log(2.0), torch.log(-torch.expm1(logp)), torch.log1p(-torch.exp(logp)))


def cut_loss(
    token_logps: torch.Tensor,
    mask: torch.Tensor,
    unlikely_mask: torch.Tensor,
    unlikelihood_weight: float = 1.0,
    num_tokens: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Return the contrastive-unlikelihood loss (eq-cut-loss) and metrics.

    token_logps, mask, unlikely_mask: [B, T−1] (log π(y_t|x, y_<t), completion mask, and 1 on the
    tokens the judgement marks; `unlikely_mask` is multiplied by `mask`, so padding is never marked).
    unlikelihood_weight: w of (eq-cut-loss) (the CUT code's `weight_unlike`, default 1).
    num_tokens: the normaliser N (default Σ mask), as in `sft_loss`, so that with no marked token
    the loss *is* `sft_loss`.
    """
    if token_logps.shape != mask.shape or unlikely_mask.shape != mask.shape:
        raise ValueError(f"token_logps {tuple(token_logps.shape)}, mask {tuple(mask.shape)} and unlikely_mask "
                         f"{tuple(unlikely_mask.shape)} must have the same shape [B, T-1]")
    if unlikelihood_weight < 0:
        raise ValueError(f"unlikelihood_weight must be ≥ 0, got {unlikelihood_weight}")
    mask = mask.to(token_logps.dtype)
    marked = unlikely_mask.to(token_logps.dtype) * mask
    kept = mask - marked
    n_tokens = mask.sum().clamp(min=1.0) if num_tokens is None else torch.tensor(float(num_tokens))
    nll = -(token_logps * kept).sum()
    ul = -(unlikelihood_weight * log1m_exp(token_logps) * marked).sum()
    loss = (nll + ul) / n_tokens
    n_marked = marked.sum().item()
    p_marked = (token_logps.detach().exp() * marked).sum().item() / n_marked if n_marked else float("nan")
    return loss, {"loss": loss.item(), "nll": (nll / n_tokens).item(), "unlikelihood": (ul / n_tokens).item(),
                  "marked_tokens": n_marked, "tokens": mask.sum().item(), "p_marked": p_marked}


def hindsight_flags(logps_with_judgement: torch.Tensor, logps_without: torch.Tensor, mask: torch.Tensor,
                    threshold: float = 1.1) -> torch.Tensor:
    """Return CUT's unlikelihood mask: 1 where p(y_t | x, j) / p(y_t | x) > threshold (eq-cut-hindsight).

    logps_with_judgement: log p(y_t | x⁺, y_<t) with the judgement j in the context; logps_without:
    log p(y_t | x, y_<t); both [B, T−1] over the *same* completion tokens, aligned. threshold: τ
    (the CUT code's default 1.1). The flags carry no gradient (the paper computes the ratio under no-grad).
    """
    if logps_with_judgement.shape != logps_without.shape or mask.shape != logps_without.shape:
        raise ValueError("the two log-prob tensors and the mask must have the same shape [B, T-1], aligned on the "
                         f"completion tokens; got {tuple(logps_with_judgement.shape)}, {tuple(logps_without.shape)}, "
                         f"{tuple(mask.shape)}")
    if threshold <= 0:
        raise ValueError(f"threshold is a probability ratio and must be > 0, got {threshold}")
    ratio_log = (logps_with_judgement - logps_without).detach()
    return ((ratio_log > math.log(threshold)) & mask.bool()).to(mask.dtype)
