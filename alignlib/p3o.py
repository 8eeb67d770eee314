"""P3O in the one loop: pairs of completions, trajectory-wise clipped updates, no critic.

`--method p3o` (Pairwise Proximal Policy Optimization, Wu et al. 2023) is an
ordinary method of `alignlib.loop.train`: a loss on a batch (`p3o_step`, which
calls the pure `alignlib.losses.group.p3o_loss`, eq-p3o) plus a batch source
(`P3ORollouts`). The source is PPO's rollout buffer (`alignlib.ppo.PPORollouts`)
with three differences:

    * every prompt of a rollout gets TWO completions, sampled from the current
      policy at temperature 1 and stored as consecutive rows (2i, 2i+1); a
      minibatch always takes whole pairs;
    * the KL penalty goes into the sequence score instead of per-token rewards:
          s(x, y) = r(x, y) − β · Σ_t kl_t,   kl_t from `--kl_estimator` (k1: log π_old/π_ref)
      computed once at sampling time with the old log-probs (the paper's
      "r_final = r − β·KL", a constant of the update);
    * no critic, no GAE, no advantages: the update reads only s(y_1) − s(y_2),
      so adding any per-prompt constant c(x) to the reward leaves it unchanged.

As in PPO, a rollout of per_device × accumulation × num_mini_batches completions
(half as many prompts) is sampled every ppo_epochs × num_mini_batches optimizer
steps and trained on in shuffled minibatches, with the sequence-level ratio
q = π_θ(y|x)/π_old(y|x) clipped to [1 − cliprange, 1 + cliprange]. The first
minibatch of a rollout is trained on the weights that sampled it (ratio 1,
nothing clipped). A checkpoint falls only on a rollout boundary, so a resumed run
equals the uninterrupted one.

Config fields read: per_device_train_batch_size (completions per micro-batch; even),
gradient_accumulation_steps, num_mini_batches, ppo_epochs, cliprange, beta,
kl_estimator, max_new_tokens, seed. PPO-only options (critic, GAE, score
normalisation, adaptive KL, policy filtration, macro actions) are refused.
"""

from __future__ import annotations

import torch

from .losses.group import p3o_loss
from .losses.ppo import kl_penalty
from .ppo import PPORollouts, Rollout, check_scores, rollout_layout, rollout_logprobs


def check_p3o_config(c) -> None:
    """Raise ValueError for settings P3O cannot honour (called when its source is built, before any step)."""
    if c.per_device_train_batch_size % 2:
        raise ValueError(f"--method p3o trains on pairs of completions of one prompt: per_device_train_batch_size "
                         f"(completions per micro-batch) must be even, got {c.per_device_train_batch_size}")
    per_rollout = c.ppo_epochs * c.num_mini_batches
    for name in ("save_steps", "max_steps"):
        value = getattr(c, name)
        if value % per_rollout:
            raise ValueError(f"--method p3o: {name} ({value}) must be a multiple of ppo_epochs × num_mini_batches "
                             f"({per_rollout}), the optimizer steps per rollout, so that checkpoints fall between "
                             f"rollouts and a resumed run is exact; use e.g. {name} "
                             f"{max(per_rollout, value - value % per_rollout)}")
    if c.temperature != 1.0:
        raise ValueError(f"--method p3o samples at temperature 1 (got {c.temperature}): its ratio and KL penalty use "
                         "the log-probabilities of π itself")
    unsupported = {"pf_strategy": c.pf_strategy is not None, "score_norm": c.score_norm,
                   "score_clip": c.score_clip is not None, "kl_target": c.kl_target is not None,
                   "macro_action_size": c.macro_action_size != 1, "whiten_rewards": c.whiten_rewards,
                   "entropy_coef": c.entropy_coef != 0}
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError(f"--method p3o has no critic, per-token rewards or adaptive KL; {', '.join(bad)} "
                         "belong to --method ppo: leave them at their defaults")


class P3ORollouts(PPORollouts):
    """P3O's batch source: every ppo_epochs × num_mini_batches steps, two completions for each of half as many prompts."""

    rows_per_unit = 2
    token_keys = ("action_mask", "old_logprobs")
    batch_unit = "completions (two per prompt)"  # what per_device_train_batch_size counts, for the loop's message

    @property
    def kept_per_prompt(self) -> int:
        return 2

    @torch.no_grad()
    def rollout(self, index: int, rank: int) -> Rollout:
        """Return rollout `index` of this process: pairs, old log-probs and KL-penalised sequence scores."""
        if self._cache is not None and self._cache.index == index:
            return self._cache
        c, model = self.config, self.policy()
        prompts = [p for p in self.rollout_prompts(index, rank) for _ in range(2)]  # rows 2i, 2i+1: one prompt
        s = self._sample(prompts, index, 0, rank)
        raw = check_scores(self.reward_fn(prompts, s.texts), len(prompts))
        rows = rollout_layout(s.prompt_ids, s.completion_ids, self.tokenizer.pad_token_id)
        mask = rows["action_mask"]
        old_lp, _, ref_lp = self.old_and_reference_logprobs(rows, model)
        kl = (kl_penalty(old_lp, ref_lp, c.kl_estimator) * mask).sum(-1)  # [N] sequence KL estimate
        scores = raw - c.beta * kl  # r − β·KL (eq-p3o's s)
        gap = (raw[0::2] - raw[1::2]).abs()
        metrics = {"score": raw.mean().item(), "kl": kl.mean().item(), "kl_coef": c.beta,
                   "pair_score_gap": gap.mean().item(), "completion_length": mask.sum(-1).mean().item(),
                   "eos_fraction": sum(1.0 for ids in s.completion_ids if ids[-1] == self.tokenizer.eos_token_id)
                   / len(prompts)}
        rows.update(old_logprobs=old_lp, scores=scores)
        self._cache = Rollout(index, rows, metrics)
        return self._cache


def p3o_source(ctx) -> P3ORollouts:
    """`Method.source` of P3O (takes `alignlib.loop.SourceContext`)."""
    check_p3o_config(ctx.config)
    return P3ORollouts(ctx.policy, ctx.tokenizer, ctx.prompts, reward_fn=ctx.reward_fn, reference=ctx.reference,
                       config=ctx.config, **ctx.common())


def p3o_step(ctx, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """P3O's loss on a micro-batch of pairs (rows 2i, 2i+1 share a prompt): `p3o_loss` on sequence log-probs.

    ℓ(y) = Σ_t m_t · log π_θ(y_t | x, y_<t); the old ℓ comes from the rollout. The
    loss is the mean over the pairs of the micro-batch (eq-p3o).
    """
    mask = batch["action_mask"]
    seq = (rollout_logprobs(ctx.model, batch).float() * mask).sum(-1)
    old = (batch["old_logprobs"].float() * mask).sum(-1)
    s = batch["scores"].float()
    loss, m = p3o_loss(seq[0::2], old[0::2], seq[1::2], old[1::2], s[0::2], s[1::2], clip_range=ctx.config.cliprange)
    with torch.no_grad():
        log_ratio = seq - old
    metrics = {"loss": loss.item(), "clipfrac": m["policy/clipfrac_avg"], "ratio": log_ratio.exp().mean().item(),
               "max_abs_log_ratio": log_ratio.abs().max().item(), **batch["rollout_metrics"]}
    return loss, metrics
