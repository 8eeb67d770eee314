"""Diagnostics of pairwise training: log-probabilities of fixed preference pairs under a model.

Used by the DPO-family chapter to watch what a margin loss does to each side of a
pair separately (gradient entanglement, METHODS.md §3.14): the loss only sees the
margin h = ρ(y_w) − ρ(y_l), so ℓ(y_w) and ℓ(y_l) can both fall while h grows;
and to measure whether a trained model *ranks* answers like gold does, against
the ranking accuracy its exact optimum would reach (Chen et al., §3.15).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .data import collate_examples, tokenize_rows
from .logprobs import sequence_logprobs


@torch.no_grad()
def pair_logprobs(model, tokenizer, rows: Sequence[dict], batch_size: int = 128,
                  max_completion_length: int | None = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (ℓ(y_w) [N], ℓ(y_l) [N]) of `rows` (prompt/chosen/rejected) under `model`, in float32 on the CPU.

    Rows are tokenised exactly as the training loop tokenises them (`alignlib.data`),
    so the numbers are the log-probs the DPO loss saw (eq-seq-logp).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    examples = tokenize_rows(list(rows), tokenizer, "pairs", max_completion_length=max_completion_length)
    chosen, rejected = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate_examples(chunk, tokenizer.pad_token_id).items()}
        logps, _, _ = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        logps = logps.float().cpu()
        chosen.append(logps[: len(chunk)])
        rejected.append(logps[len(chunk):])
    if was_training:
        model.train()
    return torch.cat(chosen), torch.cat(rejected)


def _gold_order(truth: torch.Tensor) -> torch.Tensor:
    """Map gold verdicts (1: a better, 0: b better, 0.5: tie) to +1 / −1 / 0."""
    return torch.sign(torch.as_tensor(truth, dtype=torch.float32) - 0.5)


def ranking_accuracy(logp_a: torch.Tensor, logp_b: torch.Tensor, truth) -> float:
    """Return the fraction of non-tied pairs that a model ranks like gold: ℓ(a) > ℓ(b) exactly where gold prefers a.

    logp_a, logp_b: [N] log π(y|x) of the two answers (sums over tokens, or
    per-token means for the length-normalised variant); truth: [N] gold verdicts
    (`World.gold_verdict`). Pairs that gold ties are left out. This is the
    ranking accuracy of Chen et al. (METHODS.md §3.15) with gold in place of
    the raters' majority.
    """
    order = _gold_order(truth)
    keep = order != 0
    if not keep.any():
        raise ValueError("every pair is a gold tie: ranking accuracy is undefined")
    return (torch.sign(logp_a - logp_b)[keep] == order[keep]).float().mean().item()


def idealised_ranking_accuracy(ref_a: torch.Tensor, ref_b: torch.Tensor, reward_gap: torch.Tensor, beta: float,
                               truth, tie_ratio: float = 1.05) -> float:
    """Return the ranking accuracy of the exact KL-regularised optimum π* ∝ π_ref·exp(r*/β) (METHODS.md §3.15).

    log π*(a)/π*(b) = log π_ref(a)/π_ref(b) + (r*(a) − r*(b))/β, where reward_gap = r*(a) − r*(b)
    is on the Bradley–Terry log-odds scale of the labels (for a world's oracle:
    gold gap / oracle temperature). A ratio within [1/tie_ratio, tie_ratio] is a
    predicted tie and counts as wrong (Chen et al.'s 1.05 band). β → 0 gives 1
    on non-tied pairs; β → ∞ gives π_ref's own ranking accuracy.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    log_ratio = (ref_a - ref_b) + torch.as_tensor(reward_gap, dtype=torch.float32) / beta
    band = math.log(tie_ratio)
    predicted = torch.where(log_ratio.abs() <= band, torch.zeros_like(log_ratio), torch.sign(log_ratio))
    order = _gold_order(truth)
    keep = order != 0
    if not keep.any():
        raise ValueError("every pair is a gold tie: ranking accuracy is undefined")
    return (predicted[keep] == order[keep]).float().mean().item()
