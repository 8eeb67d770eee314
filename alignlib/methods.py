"""The registry of training methods: each is a loss on a batch plus the kind of data it needs.

The loop in `train.py` is the same for every method; a method only says which
data it consumes ("sft": prompt/completion; "pairs": prompt/chosen/rejected)
and how to turn a collated batch into a loss. Online methods (later chapters)
add a data kind whose batches are sampled from the current policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .logprobs import sequence_logprobs
from .losses import bradley_terry_loss, dpo_loss, sft_loss


@dataclass
class StepContext:
    """What a method's step may use: the policy, the reference and the config."""

    model: torch.nn.Module
    reference: object  # models.Reference
    config: object  # config.TrainConfig
    # completion tokens in the global batch / (micro-batches × processes): the normaliser that
    # makes a token-averaged loss independent of how the global batch is split (set by the loop)
    tokens_per_micro_batch: float | None = None


@dataclass(frozen=True)
class Method:
    name: str
    data: str  # "sft" or "pairs"
    needs_reference: bool
    step: Callable[[StepContext, dict], tuple[torch.Tensor, dict[str, float]]]
    model_kind: str = "causal_lm"  # or "reward": a sequence classifier with one output (the scalar reward)


def _logps(model, batch):
    return sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])


def sft_step(ctx: StepContext, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    _, token_lp, mask = _logps(ctx.model, batch)
    return sft_loss(token_lp, mask, num_tokens=ctx.tokens_per_micro_batch)


def dpo_step(ctx: StepContext, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Batch rows: B chosen then B rejected (one forward pass for both, as TRL does)."""
    logps, _, _ = _logps(ctx.model, batch)
    with torch.no_grad(), ctx.reference.context(ctx.model) as ref:
        ref_logps, _, _ = _logps(ref, batch)
    b = logps.shape[0] // 2
    loss, metrics = dpo_loss(logps[:b], logps[b:], ref_logps[:b], ref_logps[b:],
                             beta=ctx.config.beta, label_smoothing=ctx.config.label_smoothing)
    return loss, {"loss": loss.item(), **metrics}


def reward_step(ctx: StepContext, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Score whole prompt+completion rows (B chosen, then B rejected) and apply the Bradley–Terry loss."""
    rewards = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    chosen, rejected = rewards.float().chunk(2)
    return bradley_terry_loss(chosen, rejected, center_rewards_coefficient=ctx.config.center_rewards_coefficient)


METHODS: dict[str, Method] = {
    "sft": Method("sft", data="sft", needs_reference=False, step=sft_step),
    "dpo": Method("dpo", data="pairs", needs_reference=True, step=dpo_step),
    "reward": Method("reward", data="pairs", needs_reference=False, step=reward_step, model_kind="reward"),
}
