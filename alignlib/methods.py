"""The registry of training methods: each is a loss on a batch plus the kind of data it needs.

The loop in `loop.py` is the same for every method; a method only says which
data it consumes ("sft": prompt/completion; "pairs": prompt/chosen/rejected)
and how to turn a collated batch into a loss. Online methods (later chapters)
add a data kind whose batches are sampled from the current policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .logprobs import sequence_logprobs
from .lists import list_logps
from .losses import LISTWISE_LOSSES, PAIRWISE_LOSSES, bradley_terry_loss, group, sft_loss


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
    data: str  # "sft", "pairs", "lists" (offline) or "online_pairs", "online_groups" (sampled from the policy; alignlib.online)
    needs_reference: bool
    step: Callable[[StepContext, dict], tuple[torch.Tensor, dict[str, float]]]
    model_kind: str = "causal_lm"  # or "reward": a sequence classifier with one output (the scalar reward)
    # online methods with their own batch source: a factory taking alignlib.loop.SourceContext
    # (default: the shared source of the data kind, OnlineGroups or OnlinePairs)
    source: Callable | None = None


def _logps(model, batch):
    return sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])


def sft_step(ctx: StepContext, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    _, token_lp, mask = _logps(ctx.model, batch)
    return sft_loss(token_lp, mask, num_tokens=ctx.tokens_per_micro_batch)


def _policy_and_reference_logps(ctx: StepContext, batch: dict):
    """Return policy (ℓ [N], token log-probs [N, T−1], mask) and reference (ℓ_ref, token log-probs) of every row."""
    logps, token_lp, mask = _logps(ctx.model, batch)
    with torch.no_grad(), ctx.reference.context(ctx.model) as ref:
        ref_logps, ref_token_lp, _ = _logps(ref, batch)
    return logps, token_lp, mask, ref_logps, ref_token_lp


# pairwise losses that need inputs an offline pair batch does not have (samples from π_ref, rewards)
NEEDS_ONLINE_INPUTS = {"xpo": "samples from π_ref", "selm": "samples from π_ref", "copg": "a reward for each completion"}


def pairwise_loss_kwargs(config, chosen_lengths: torch.Tensor, rejected_lengths: torch.Tensor) -> dict:
    """Return the extra keyword arguments `config.loss_type` takes, from the config and the batch."""
    name = config.loss_type
    if name in ("dpo", "robust"):
        return {"label_smoothing": config.label_smoothing}
    if name == "exo_pair" and config.label_smoothing > 0:  # EXO needs ε > 0; unset, it keeps its default 1e-3
        return {"label_smoothing": config.label_smoothing}
    if name == "rpo":
        return {"alpha": config.rpo_alpha, "chosen_lengths": chosen_lengths}
    if name == "f_dpo":
        return {"divergence": config.f_divergence_type, "alpha": config.f_alpha_divergence_coef}
    if name == "asft":
        return {"chosen_lengths": chosen_lengths, "rejected_lengths": rejected_lengths}
    return {}


def dpo_step(ctx: StepContext, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Any loss of the DPO family (`config.loss_type`) on a pair batch: B chosen rows then B rejected rows.

    One forward pass for both halves, as TRL does. IPO reads log-probs averaged over
    completion tokens (TRL's and the IPO paper's length normalisation); the others read sums.
    """
    logps, _, mask, ref_logps, _ = _policy_and_reference_logps(ctx, batch)
    lengths = mask.sum(-1).float()
    if ctx.config.loss_type == "ipo":
        logps, ref_logps = logps / lengths.clamp(min=1), ref_logps / lengths.clamp(min=1)
    b = logps.shape[0] // 2
    loss_fn = PAIRWISE_LOSSES[ctx.config.loss_type]
    loss, metrics = loss_fn(logps[:b], logps[b:], ref_logps[:b], ref_logps[b:], beta=ctx.config.beta,
                            **pairwise_loss_kwargs(ctx.config, lengths[:b], lengths[b:]))
    if "scores" in batch:  # online pairs: the reward of what the policy sampled
        metrics["score"] = batch["scores"].mean().item()
    return loss, {"loss": loss.item(), **metrics}


def reward_step(ctx: StepContext, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Score whole prompt+completion rows (B chosen, then B rejected) and apply the Bradley–Terry loss."""
    rewards = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    chosen, rejected = rewards.float().chunk(2)
    return bradley_terry_loss(chosen, rejected, center_rewards_coefficient=ctx.config.center_rewards_coefficient)


def rloo_step(ctx: StepContext, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """RLOO on k samples per prompt: reward = score − β·KL(sequence, k1), leave-one-out baseline (TRL's RLOO)."""
    logps, token_lp, mask, ref_logps, _ = _policy_and_reference_logps(ctx, batch)
    kl = (logps - ref_logps).detach()
    rewards = batch["scores"] - ctx.config.beta * kl
    advantages = group.rloo_advantages(rewards, ctx.config.samples_per_prompt)
    loss, metrics = group.rloo_loss(token_lp, token_lp.detach(), advantages, mask)
    return loss, {"loss": loss.item(), "score": batch["scores"].mean().item(), "kl": kl.mean().item(),
                  "reward": rewards.mean().item(), **metrics}


def grpo_step(ctx: StepContext, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO on k samples per prompt: group-normalised advantages, per-token k3 KL to π_ref weighted by β.

    The loss is normalised per sequence, then averaged ("grpo", the DeepSeekMath form):
    unlike TRL's default "dapo" it needs no token count of the whole global batch, so it
    is the same for any split of the batch over processes and accumulation steps.
    """
    logps, token_lp, mask, ref_logps, ref_token_lp = _policy_and_reference_logps(ctx, batch)
    advantages = group.grpo_advantages(batch["scores"], ctx.config.samples_per_prompt)
    loss, metrics = group.grpo_loss(token_lp, token_lp.detach(), advantages, mask, ref_logprobs=ref_token_lp,
                                  beta=ctx.config.beta, loss_type="grpo")
    return loss, {"loss": loss.item(), "score": batch["scores"].mean().item(),
                  "kl": (logps - ref_logps).detach().mean().item(), **metrics}


def listwise_step(ctx: StepContext, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """A listwise loss (`config.listwise_loss`) on B lists of K completions (rows completion-major, scores [B, K])."""
    logps, _, mask, ref_logps, _ = _policy_and_reference_logps(ctx, batch)
    k = batch["scores"].shape[1]
    kwargs = {"lengths": list_logps(mask.sum(-1), k)} if ctx.config.listwise_loss == "pro" else {}
    loss, metrics = LISTWISE_LOSSES[ctx.config.listwise_loss](list_logps(logps, k), list_logps(ref_logps, k),
                                                              batch["scores"], beta=ctx.config.beta, **kwargs)
    return loss, {"loss": loss.item(), **metrics}


METHODS: dict[str, Method] = {
    "sft": Method("sft", data="sft", needs_reference=False, step=sft_step),
    "dpo": Method("dpo", data="pairs", needs_reference=True, step=dpo_step),
    "reward": Method("reward", data="pairs", needs_reference=False, step=reward_step, model_kind="reward"),
    "listwise": Method("listwise", data="lists", needs_reference=True, step=listwise_step),
    # online: the batch source samples from the current policy (alignlib.online)
    "online_dpo": Method("online_dpo", data="online_pairs", needs_reference=True, step=dpo_step),
    "rloo": Method("rloo", data="online_groups", needs_reference=True, step=rloo_step),
    "grpo": Method("grpo", data="online_groups", needs_reference=True, step=grpo_step),
}
