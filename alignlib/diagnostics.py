"""Diagnostics of pairwise training: log-probabilities of fixed preference pairs under a model.

Used by the DPO-family chapter to watch what a margin loss does to each side of a
pair separately (gradient entanglement, METHODS.md §3.14): the loss only sees the
margin h = ρ(y_w) − ρ(y_l), so ℓ(y_w) and ℓ(y_l) can both fall while h grows.
"""

from __future__ import annotations

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
