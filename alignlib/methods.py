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
from .ppo import ppo_source, ppo_step, wrap_with_critic
from .p3o import p3o_source, p3o_step
from . import online_dpo as _online_dpo
from . import selfplay as _selfplay


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
    data: str  # "sft", "pairs", "lists" (offline) or "online_pairs", "online_groups", "online_lists" (sampled from the policy; alignlib.online)
    needs_reference: bool
    step: Callable[[StepContext, dict], tuple[torch.Tensor, dict[str, float]]]
    model_kind: str = "causal_lm"  # or "reward": a sequence classifier with one output (the scalar reward)
    # online methods with their own batch source: a factory taking alignlib.loop.SourceContext
    # (default: the shared source of the data kind, OnlineGroups or OnlinePairs)
    source: Callable | None = None
    # wrap_model(model, config) -> nn.Module with a `.policy` attribute: called on the policy before
    # `accelerator.prepare`, so extra trained parts (PPO's critic) share its optimizer, DDP wrapper and
    # checkpoints; sampling and the returned model use `.policy`; its save_pretrained saves both
    wrap_model: Callable | None = None


def _logps(model, batch):
    return sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])


def sft_step(ctx: StepContext, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    _, token_lp, mask = _logps(ctx.model, batch)
    return sft_loss(token_lp, mask, num_tokens=ctx.tokens_per_micro_batch)


def _policy_and_reference_logps(ctx: StepContext, batch: dict):
    """Return policy (ℓ [N], token log-probs [N, T−1], mask) and reference (ℓ_ref, token log-probs) of every row."""
    logps, token_lp, mask = _logps(ctx.model, batch)
    if "ref_logps" in batch:  # precomputed before training (offline data, precompute_ref_log_probs)
        return logps, token_lp, mask, batch["ref_logps"].to(logps.dtype), None
    with torch.no_grad(), ctx.reference.context(ctx.model) as ref:
        ref_logps, ref_token_lp, _ = _logps(ref, batch)
    return logps, token_lp, mask, ref_logps, ref_token_lp


# pairwise losses that need inputs an offline pair batch does not have (samples from π_ref, rewards)
# (--method dpo/online_dpo refuse them; the methods of the same name provide the inputs: alignlib.online_dpo)
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


def t_reg_step(ctx: StepContext, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """T-REG on a pair batch whose rows carry per-token rewards ("token_rewards", losses/pairwise.t_reg_loss)."""
    from .losses.pairwise import t_reg_loss

    if "token_rewards" not in batch:
        raise ValueError("--method t_reg needs token rewards: give every pair row 'chosen_token_rewards' and "
                         "'rejected_token_rewards' (one per completion token, EOS included), e.g. from "
                         "alignlib.diagnostics.add_contrastive_token_rewards")
    _, token_lp, mask, _, ref_token_lp = _policy_and_reference_logps(ctx, batch)
    rewards, b = batch["token_rewards"][:, 1:].to(token_lp.dtype), token_lp.shape[0] // 2  # token t read at t − 1
    mask = mask.to(token_lp.dtype)
    loss, metrics = t_reg_loss(token_lp[:b], token_lp[b:], ref_token_lp[:b], ref_token_lp[b:], mask[:b], mask[b:],
                               rewards[:b], rewards[b:], beta=ctx.config.beta, alpha=ctx.config.t_reg_alpha,
                               tau=ctx.config.t_reg_tau)
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


def f_dpg_step(ctx: StepContext, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """f-DPG on k samples per prompt: minimise D_f(π_θ ‖ p), p ∝ π_ref·exp(score/β) (losses/fdpg.py; chapter 3b).

    The divergence is `config.fdpg_divergence`; Z(x) is estimated from each prompt's group.
    """
    from .losses.fdpg import fdpg_loss

    logps, _, _, ref_logps, _ = _policy_and_reference_logps(ctx, batch)
    loss, metrics = fdpg_loss(logps, ref_logps, batch["scores"], ctx.config.samples_per_prompt, beta=ctx.config.beta,
                              divergence=ctx.config.fdpg_divergence)
    return loss, {"loss": loss.item(), "score": batch["scores"].mean().item(),
                  "kl": (logps - ref_logps).detach().mean().item(), **metrics}


def _best_of_each_group(batch: dict, k: int) -> dict:
    """Return the rows of an online-groups batch that are the best-scored of their prompt's k samples."""
    keep = group.raft_select(batch["scores"], k, keep=1.0 / k, strategy="local")
    return {key: value[keep] for key, value in batch.items()}


def raft_step(ctx: StepContext, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """RAFT, iterated: SFT on the best of each prompt's k fresh samples (reward-ranked fine-tuning, Dong et al. 2023).

    One optimizer step per sampled batch ("local" ranking, keep 1/k): the LMFlow
    recipe with a round of one step. Scores: the reward of all samples, and of the kept ones.
    """
    best = _best_of_each_group(batch, ctx.config.samples_per_prompt)
    _, token_lp, mask = _logps(ctx.model, best)
    loss, metrics = sft_loss(token_lp, mask)
    return loss, {**metrics, "score": batch["scores"].mean().item(), "kept_score": best["scores"].mean().item()}


def superhf_step(ctx: StepContext, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """SuperHF: cross-entropy on the best of each prompt's k samples + β · KL(π_ref ‖ π_θ) per token.

    (Mukobi et al. 2023.)
    """
    best = _best_of_each_group(batch, ctx.config.samples_per_prompt)
    ids, attn = best["input_ids"], best["attention_mask"]
    logits = ctx.model(input_ids=ids, attention_mask=attn).logits
    with torch.no_grad(), ctx.reference.context(ctx.model) as ref:
        ref_logits = ref(input_ids=ids, attention_mask=attn).logits
    loss, metrics = group.superhf_loss(logits[:, :-1], ref_logits[:, :-1], ids[:, 1:], best["completion_mask"][:, 1:],
                                       kl_coef=ctx.config.beta)
    return loss, {**metrics, "score": batch["scores"].mean().item(), "kept_score": best["scores"].mean().item()}


def listwise_step(ctx: StepContext, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """A listwise loss (`config.listwise_loss`) on B lists of K completions (rows completion-major, scores [B, K])."""
    logps, _, mask, ref_logps, _ = _policy_and_reference_logps(ctx, batch)
    k = batch["scores"].shape[1]
    kwargs = {"lengths": list_logps(mask.sum(-1), k)} if ctx.config.listwise_loss == "pro" else {}
    loss, metrics = LISTWISE_LOSSES[ctx.config.listwise_loss](list_logps(logps, k), list_logps(ref_logps, k),
                                                              batch["scores"], beta=ctx.config.beta, **kwargs)
    return loss, {"loss": loss.item(), **metrics}


def online_listwise_step(ctx: StepContext, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """`listwise_step` on lists sampled from the current policy (alignlib.online.OnlineLists), plus their mean reward."""
    loss, metrics = listwise_step(ctx, batch)
    return loss, {**metrics, "score": batch["scores"].mean().item(),
                  "lists_dropped": float(batch.get("lists_dropped", torch.tensor(0.0)))}


def _online_lists_source(ctx):
    from .online import online_lists_source

    return online_lists_source(ctx)


def cut_step(ctx: StepContext, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """CUT on "cut" data: unlikelihood on the judgement-marked tokens, likelihood on all others (losses/feedback.py)."""
    from .losses.feedback import cut_loss

    _, token_lp, mask = _logps(ctx.model, batch)
    return cut_loss(token_lp, mask, batch["unlikely_mask"][:, 1:], ctx.config.unlikelihood_weight,
                    num_tokens=ctx.tokens_per_micro_batch)


def a_lol_step(ctx: StepContext, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """A-LoL on lists of K reference samples per prompt with rewards (losses/offline_pg.py; Baheti et al. 2024).

    V_ref(x) is the mean reward of the prompt's K samples (a Monte-Carlo stand-in for the paper's value head).
    """
    from .losses.offline_pg import a_lol_loss, group_mean_advantages

    logps, _, _, ref_logps, _ = _policy_and_reference_logps(ctx, batch)
    advantages = group_mean_advantages(batch["scores"])  # [B, K]; rows are completion-major (j·B + b)
    loss, metrics = a_lol_loss(logps, ref_logps, advantages.t().reshape(-1), epsilon=ctx.config.alol_clip)
    return loss, {**metrics, "score": batch["scores"].mean().item()}


METHODS: dict[str, Method] = {
    "sft": Method("sft", data="sft", needs_reference=False, step=sft_step),
    # offline policy gradient on scored reference samples (chapter 3b): A-LoL
    "a_lol": Method("a_lol", data="lists", needs_reference=True, step=a_lol_step),
    # language feedback (chapter 7): contrastive unlikelihood on judgement-marked tokens
    "cut": Method("cut", data="cut", needs_reference=False, step=cut_step),
    "dpo": Method("dpo", data="pairs", needs_reference=True, step=dpo_step),
    "t_reg": Method("t_reg", data="pairs", needs_reference=True, step=t_reg_step),  # DPO + token-weighted term (ch. 4)
    "reward": Method("reward", data="pairs", needs_reference=False, step=reward_step, model_kind="reward"),
    "listwise": Method("listwise", data="lists", needs_reference=True, step=listwise_step),
    # online: the batch source samples from the current policy (alignlib.online)
    "online_dpo": Method("online_dpo", data="online_pairs", needs_reference=True, step=dpo_step),
    "rloo": Method("rloo", data="online_groups", needs_reference=True, step=rloo_step),
    "grpo": Method("grpo", data="online_groups", needs_reference=True, step=grpo_step),
    # f-DPG: any f-divergence to the tilted target π_ref·exp(r/β) (alignlib.losses.fdpg; chapter 3b)
    "f_dpg": Method("f_dpg", data="online_groups", needs_reference=True, step=f_dpg_step),
    "raft": Method("raft", data="online_groups", needs_reference=False, step=raft_step),
    "superhf": Method("superhf", data="online_groups", needs_reference=True, step=superhf_step),
    # PPO: rollouts + critic + minibatch epochs (alignlib.ppo)
    "ppo": Method("ppo", data="online_rollouts", needs_reference=True, step=ppo_step, source=ppo_source,
                  wrap_model=wrap_with_critic),
    # P3O: PPO's rollout buffer with pairs, sequence-level clipping and no critic (alignlib.p3o)
    "p3o": Method("p3o", data="online_rollouts", needs_reference=True, step=p3o_step, source=p3o_source),
    "online_listwise": Method("online_listwise", data="online_lists", needs_reference=True,
                              step=online_listwise_step, source=_online_lists_source),
    # self-play on the world's general preference P(y ≻ y'), no reward (alignlib.selfplay; chapter 5)
    "nash_md": Method("nash_md", data="online_pairs", needs_reference=True, step=_selfplay.nash_md_step,
                      source=_selfplay.nash_md_source),
    "sppo": Method("sppo", data="online_groups", needs_reference=True, step=_selfplay.sppo_step,
                   source=_selfplay.win_rate_source),
    "dno": Method("dno", data="online_groups", needs_reference=True, step=_selfplay.dno_step,
                  source=_selfplay.win_rate_source),
    "inpo": Method("inpo", data="online_pairs", needs_reference=True, step=_selfplay.inpo_step,
                   source=_selfplay.inpo_source),
    # online DPO with exploration, and online CoPG (alignlib.online_dpo; chapter 4b)
    "xpo": Method("xpo", data="online_pairs", needs_reference=True, step=_online_dpo.xpo_step,
                  source=_online_dpo.exploration_source),
    "selm": Method("selm", data="online_pairs", needs_reference=True, step=_online_dpo.selm_step,
                   source=_online_dpo.exploration_source),
    "copg": Method("copg", data="online_pairs", needs_reference=True, step=_online_dpo.copg_step,
                   source=_online_dpo.copg_source),
}
