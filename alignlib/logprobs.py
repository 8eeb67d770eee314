"""Token and sequence log-probabilities with masks: the one place they are computed.

Conventions (book/notation.md): a row holds prompt tokens then completion
tokens then right padding; `completion_mask[b, t] = 1` where token t belongs
to the completion. The log-prob of token t is read from the logits at t − 1,
so every returned token tensor has length T − 1 and is aligned with
`input_ids[:, 1:]`.
"""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Return log π(y_t | y_<t) for t = 1..T−1, shape [B, T−1], in float32.

    logits: [B, T, V] from a causal LM over `input_ids` [B, T].
    """
    logits = logits[:, :-1].float()
    labels = input_ids[:, 1:].unsqueeze(-1)
    # log_softmax(x)[label] = x[label] − logsumexp(x); gathering first avoids a [B, T, V] copy
    return logits.gather(-1, labels).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def sequence_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (ℓ(y) [B], masked token log-probs [B, T−1], mask [B, T−1]).

    ℓ(y) = Σ_t m_t log π(y_t | x, y_<t) is the log-probability of the
    completion given the prompt; padding and prompt tokens contribute 0.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    mask = completion_mask[:, 1:].to(torch.float32)
    token_lp = token_logprobs(logits, input_ids) * mask
    return token_lp.sum(-1), token_lp, mask
