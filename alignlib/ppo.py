"""PPO in the one loop: a critic next to the policy, rollouts, GAE, minibatch epochs.

`--method ppo` is an ordinary method of `alignlib.loop.train`: a loss on a
batch (`ppo_step`) plus its own batch source (`PPORollouts`). What makes it
PPO lives in the source:

    every S = ppo_epochs × num_mini_batches optimizer steps it samples ONE
    rollout from the current policy (prompts × one completion each), scores it
    with the reward function and computes, with no gradient,
        old log-probs   log π_old(y_t | x, y_<t)      (the ratio's denominator)
        values          V_old(x, y_<t)                (the critic before the update)
        ref log-probs   log π_ref(y_t | x, y_<t)      (the KL penalty)
        token rewards   r_t = −β·kl_t (+ score at the last token)    eq-ppo-reward
        advantages, returns by GAE                                   eq-gae
    then serves shuffled minibatches of that rollout for the next S steps
    (`ppo_epochs` passes, each split into `num_mini_batches` optimizer steps).

The first minibatch of every rollout is trained on exactly the weights that
sampled it, so its importance ratios are 1 and nothing is clipped (tested).

Value function: a separate critic, a copy of the initial policy's transformer
backbone with a new scalar head (`PolicyWithCritic`), not a head on the
policy's own backbone. The two losses then do not share features: the value
regression (whose targets move a lot early on, while the head is untrained)
cannot disturb the policy, and `vf_coef` only weighs the critic's step size
against the policy's instead of trading one objective off against the other.
The price is a second model's memory and compute (InstructGPT's choice;
Ouyang et al. 2022 initialise the critic from the reward model, we from the
SFT policy because a reward may be any callable). Policy and critic are one
`nn.Module`, so the loop's one optimizer, gradient clipping, DDP wrapper and
checkpoints cover both.

Sampling is pure: temperature 1 (the config refuses another for PPO), no top-k,
no top-p, stopped at EOS (the EOS token is the last action and carries the
score) or after `max_new_tokens` (a truncated completion is scored as it is).
Only then are the samples drawn from the π whose log-probs enter the KL
penalty; truncated sampling (top-k/top-p, or a temperature the log-probs do
not account for) draws tokens π itself rarely chooses, the k1 estimate of
KL(π‖π_ref) is then biased and is often negative, and PPO happily "earns"
reward from the negative penalty.

Options of the rollout (all off by default): `score_norm` / `score_clip` (PPO-max:
scores normalised by their running statistics, a buffer of `PolicyWithCritic`, and
clipped); `pf_strategy` (PF-PPO: k samples per prompt, train on the rows
`pf_filter` keeps); a reward object with a `token_rewards(rows)` method adds dense
per-token rewards before GAE (RTO: `DenseDPOReward`); `macro_action_size` (MA-RLHF:
GAE over fixed chunks of tokens, `macro_gae`).

Exact resume: a checkpoint falls only on a rollout boundary (the config
requires `save_steps` and `max_steps` to be multiples of S); the adaptive KL
coefficient is a buffer of `PolicyWithCritic`, saved and restored with the
weights; sampling and minibatch order are seeded by (seed, rollout, epoch, rank).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .logprobs import token_logprobs
from .losses.group import pf_filter
from .losses.ppo import (RunningMeanStd, clip_rewards, entropy_from_logits, macro_gae, masked_mean, ppo_policy_loss,
                         ppo_value_loss, token_rewards, whiten)
from .online import _OnlineSource, sampling_seed
from .rollout import sample


# ----------------------------------------------------------------------------- the critic
class PolicyWithCritic(nn.Module):
    """The causal LM π_θ and its critic V_φ in one module: one optimizer, one checkpoint, one DDP wrapper.

    `critic` is a deep copy of the policy's transformer backbone (`policy.base_model`)
    with a scalar head initialised to 0, so V starts at 0 everywhere. For a LoRA
    (peft) policy the copy includes the LoRA layers: the critic then trains its own
    adapters over a frozen copy of the base weights, as the policy does. `kl_coef` is
    the KL coefficient β of the next rollout, a buffer so that an adaptive
    controller's state is checkpointed with the weights.
    """

    def __init__(self, policy: nn.Module, kl_coef: float):
        super().__init__()
        self.policy = policy
        # a peft (--lora) policy: its causal LM, whose backbone carries the LoRA layers
        inner = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
        backbone = getattr(inner, "base_model", None)
        if backbone is None or backbone is inner:
            raise ValueError(f"PPO's critic copies the policy's transformer backbone, but {type(policy).__name__} "
                             "exposes none (`base_model`); use a transformers causal LM")
        # with --lora the copy keeps its own (trainable) LoRA layers over frozen base weights: a LoRA critic
        self.critic = copy.deepcopy(backbone)
        self.value_head = nn.Linear(policy.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.register_buffer("kl_coef", torch.tensor(float(kl_coef), dtype=torch.float64))
        # running (count, mean, M2) of the scores for --score_norm, checkpointed with the weights
        self.register_buffer("score_stats", torch.zeros(3, dtype=torch.float64))

    def forward(self, input_ids, attention_mask, position_ids=None):
        """Return (policy logits [B, L, V], values [B, L]); values[:, i] is V of the prefix up to token i."""
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        hidden = self.critic(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids).last_hidden_state
        return logits, self.value_head(hidden).squeeze(-1)

    def save_pretrained(self, path, **kwargs):
        """Save the policy as a causal LM in `path` (loadable as any model) and the critic in `path`/critic."""
        path = Path(path)
        self.policy.save_pretrained(path, **kwargs)
        self.critic.save_pretrained(path / "critic", **kwargs)
        torch.save(self.value_head.state_dict(), path / "critic" / "value_head.pt")


def wrap_with_critic(model: nn.Module, config) -> PolicyWithCritic:
    """`Method.wrap_model` of PPO: put a critic next to the policy; β starts at `config.beta`."""
    return PolicyWithCritic(model, config.beta)


# ----------------------------------------------------------------------------- rollouts
def rollout_layout(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    """Lay out rows as [left-padded prompt | right-padded completion] with position ids that skip the padding.

    Returns input_ids, attention_mask, position_ids [N, P+C] and action_mask [N, C]
    (1 on completion tokens): all completions start at column P, so every
    per-token tensor of the completion is [N, C] and right-padded, as GAE needs.
    """
    P = max(len(p) for p in prompt_ids)
    C = max(len(c) for c in completion_ids)
    n = len(prompt_ids)
    input_ids = torch.full((n, P + C), pad, dtype=torch.long)
    attention = torch.zeros((n, P + C), dtype=torch.long)
    action_mask = torch.zeros((n, C), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        input_ids[i, P - len(p):P] = torch.tensor(p)
        input_ids[i, P:P + len(c)] = torch.tensor(c)
        attention[i, P - len(p):P + len(c)] = 1
        action_mask[i, :len(c)] = 1
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": attention, "position_ids": position_ids,
            "action_mask": action_mask}


def policy_and_values(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (token log-probs [B, C], values [B, C], completion logits [B, C, V]) of the completion tokens.

    Action t (token at column P+t) is predicted from the prefix ending at column
    P+t−1, and its state value V(x, y_<t) is read from the same position.
    """
    C = batch["action_mask"].shape[1]
    P = batch["input_ids"].shape[1] - C
    logits, values = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           position_ids=batch["position_ids"])
    logprobs = token_logprobs(logits, batch["input_ids"])[:, P - 1:]
    return logprobs, values[:, P - 1:-1].float(), logits[:, P - 1:-1]


def rollout_logprobs(model, batch: dict) -> torch.Tensor:
    """Return the token log-probs [B, C] of the completion tokens under a plain causal LM (no critic)."""
    P = batch["input_ids"].shape[1] - batch["action_mask"].shape[1]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits
    return token_logprobs(logits, batch["input_ids"])[:, P - 1:]


def policy_module(model) -> nn.Module:
    """The causal LM that samples: `model.policy` of a `PolicyWithCritic`, else the model itself (P3O)."""
    return model.policy if isinstance(model, PolicyWithCritic) else model


def check_scores(scores, n: int) -> torch.Tensor:
    """Return the reward function's output as a float tensor [n]; raise on a wrong shape or non-finite values."""
    scores = torch.as_tensor([float(s) for s in scores], dtype=torch.float32) if not torch.is_tensor(scores) \
        else scores.detach().float().cpu()
    if scores.shape != (n,):
        raise ValueError(f"the reward function must return one score per completion ({n}), got shape "
                         f"{tuple(scores.shape)}; check that it maps (prompts, responses) to a list of floats")
    if not torch.isfinite(scores).all():
        raise ValueError(f"the reward function returned {int((~torch.isfinite(scores)).sum())} non-finite score(s) "
                         "(NaN or inf); check the reward model or function, or clip its output")
    return scores


@dataclass
class Rollout:
    index: int
    tensors: dict[str, torch.Tensor]  # per row, on the CPU
    metrics: dict[str, float]


class PPORollouts(_OnlineSource):
    """PPO's batch source: one rollout every `ppo_epochs × num_mini_batches` steps, served as shuffled minibatches.

    Per process, a rollout answers per_device × accumulation × num_mini_batches
    prompts (one completion each); an optimizer step reads per_device ×
    accumulation of its rows. Under DDP each process samples and whitens its own
    share of the rollout (like TRL's PPO); the adaptive KL controller sees the
    KL averaged over all processes.
    """

    rows_per_unit = 1  # minibatches are drawn in units of this many consecutive rows (P3O: 2, one pair)
    token_keys = ("action_mask", "old_logprobs", "old_values", "advantages", "returns")  # per-token [N, C] tensors

    def __init__(self, policy, tokenizer, prompts, *, reward_fn, reference, config, **common):
        super().__init__(policy, tokenizer, prompts, **common)
        self.reward_fn, self.reference, self.config = reward_fn, reference, config
        self.steps_per_rollout = config.ppo_epochs * config.num_mini_batches
        self.rows_per_step = self.per_device * self.accumulation
        self.rows_per_rollout = self.rows_per_step * config.num_mini_batches
        self._cache: Rollout | None = None

    @property
    def kept_per_prompt(self) -> int:
        """Completions per prompt that enter the rollout: 1, or what policy filtration keeps of samples_per_prompt."""
        return {None: 1, "best_of_n": 1}.get(self.config.pf_strategy, 2)

    def rollout_prompts(self, index: int, rank: int) -> list[str]:
        n = self.rows_per_rollout // self.kept_per_prompt
        start = (index * self.world_size + rank) * n
        return [self.prompts[i] for i in self.stream.take(start, n)]

    def _normalise_scores(self, scores: torch.Tensor, model) -> torch.Tensor:
        """PPO-max: scores → (score − running mean) / running std (--score_norm), clipped to ±score_clip."""
        c = self.config
        if c.score_norm:
            stats = RunningMeanStd()
            count, mean, m2 = model.score_stats.tolist()
            stats.load_state_dict({"count": int(count), "mean": mean, "m2": m2})
            batch = scores.double()
            if torch.distributed.is_available() and torch.distributed.is_initialized():  # one stream for all ranks
                parts = [torch.zeros_like(batch) for _ in range(self.world_size)]
                torch.distributed.all_gather(parts, batch.to(self.device))
                batch = torch.cat(parts).cpu()
            stats.update(batch)
            model.score_stats.copy_(torch.tensor([stats.count, stats.mean, stats.m2], dtype=torch.float64))
            scores = stats.normalize(scores.double()).float()
        if c.score_clip is not None:
            scores = clip_rewards(scores, c.score_clip)
        return scores

    def _sample(self, prompts, step, micro, rank):
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):  # the loop's own RNG stream is left untouched
            return sample(policy_module(self.policy()), self.tokenizer, prompts, max_new_tokens=self.max_new_tokens,
                          temperature=self.temperature, top_k=0, top_p=1.0,
                          seed=sampling_seed(self.seed, step, micro, rank))

    @torch.no_grad()
    def rollout(self, index: int, rank: int) -> Rollout:
        """Return rollout `index` of this process: samples, scores, old log-probs/values, advantages, returns."""
        if self._cache is not None and self._cache.index == index:
            return self._cache
        c, model = self.config, self.policy()
        prompts = self.rollout_prompts(index, rank)
        if c.pf_strategy is None:
            s = self._sample(prompts, index, 0, rank)
            raw_scores = check_scores(self.reward_fn(prompts, s.texts), len(prompts))
            pf_metrics = {}
        else:  # PF-PPO: k samples per prompt, keep the rows the filter trusts
            k = c.samples_per_prompt
            prompts = [p for p in prompts for _ in range(k)]
            s = self._sample(prompts, index, 0, rank)
            all_scores = check_scores(self.reward_fn(prompts, s.texts), len(prompts))
            g = torch.Generator().manual_seed(sampling_seed(self.seed, index, 0, rank) + 2)
            keep = pf_filter(all_scores, k, c.pf_strategy, generator=g).tolist()
            prompts = [prompts[i] for i in keep]
            s = type(s)(**{f: [getattr(s, f)[i] for i in keep] for f in ("prompts", "texts", "prompt_ids",
                                                                           "completion_ids")})
            raw_scores = all_scores[keep]
            pf_metrics = {"score_sampled": all_scores.mean().item()}
        scores = self._normalise_scores(raw_scores, model)
        rows = rollout_layout(s.prompt_ids, s.completion_ids, self.tokenizer.pad_token_id)
        mask = rows["action_mask"]
        old_lp, values, ref_lp = self.old_and_reference_logprobs(rows, model)
        beta = float(model.kl_coef)
        rewards, kl = token_rewards(scores, old_lp, ref_lp, mask, kl_coef=beta, estimator=c.kl_estimator)
        dense = getattr(self.reward_fn, "token_rewards", None)
        if dense is not None:  # a reward that also scores every token (e.g. RTO's DPO log-ratio, `DenseDPOReward`)
            extra = torch.as_tensor(dense(rows)).float()
            if extra.shape != mask.shape or not torch.isfinite(extra).all():
                raise ValueError(f"reward_fn.token_rewards must return finite values of shape {tuple(mask.shape)} "
                                 f"(rollout rows × completion tokens), got {tuple(extra.shape)}")
            rewards = rewards + extra * mask
        if c.whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False)
        advantages, returns = macro_gae(rewards, values, mask, c.macro_action_size, gamma=c.gamma, lam=c.lam)
        if c.whiten_advantages:
            advantages = whiten(advantages, mask)
        seq_kl = kl.sum(-1).mean()
        if c.kl_target is not None:  # adaptive KL (Ziegler et al. 2019): β for the next rollout
            mean_kl = seq_kl.to(self.device)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(mean_kl)
                mean_kl = mean_kl / self.world_size
            error = min(max(mean_kl.item() / c.kl_target - 1.0, -0.2), 0.2)
            n_steps = self.rows_per_rollout * self.world_size
            model.kl_coef.fill_(beta * (1.0 + error * n_steps / c.kl_horizon))
        lengths = mask.sum(-1)
        metrics = {"score": raw_scores.mean().item(), **pf_metrics, "kl": seq_kl.item(), "kl_coef": beta,
                   "non_score_reward": (-beta * kl).sum(-1).mean().item(), "completion_length": lengths.mean().item(),
                   "eos_fraction": sum(1.0 for ids in s.completion_ids if ids[-1] == self.tokenizer.eos_token_id)
                   / len(prompts),
                   "value_mean": masked_mean(values, mask).item(), "return_mean": masked_mean(returns, mask).item()}
        rows.update(old_logprobs=old_lp, old_values=values, advantages=advantages, returns=returns)
        self._cache = Rollout(index, rows, metrics)
        return self._cache

    @torch.no_grad()
    def old_and_reference_logprobs(self, rows: dict, model):
        """Return masked (old log-probs, old values or None without a critic, ref log-probs), each [N, C]."""
        mask = rows["action_mask"]
        old_lp, values, ref_lp = [], [], []
        device_type = torch.device(self.device).type if self.device is not None else "cpu"
        # the same precision as the loop's forward passes (--bf16: autocast), so that the first ratio is 1
        autocast = torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bool(self.config.bf16))
        for start in range(0, mask.shape[0], self.per_device):  # forward passes of at most one micro-batch
            chunk = {k: v[start:start + self.per_device].to(self.device) for k, v in rows.items()}
            with autocast:
                if isinstance(model, PolicyWithCritic):
                    lp, v, _ = policy_and_values(model, chunk)
                    values.append(v.cpu())
                else:
                    lp = rollout_logprobs(model, chunk)
                with self.reference.context(policy_module(model)) as ref:
                    ref_lp.append(rollout_logprobs(ref, chunk).cpu())
            old_lp.append(lp.cpu())
        values = torch.cat(values) * mask if values else None
        return torch.cat(old_lp) * mask, values, torch.cat(ref_lp) * mask

    def rows(self, step: int, micro: int, rank: int) -> torch.Tensor:
        """Return the rollout rows (indices) that micro-batch `micro` of optimizer step `step` reads."""
        j = step % self.steps_per_rollout
        epoch, minibatch = divmod(j, self.config.num_mini_batches)
        g = torch.Generator().manual_seed(sampling_seed(self.seed, step // self.steps_per_rollout, epoch, rank) + 1)
        u = self.rows_per_unit
        perm = torch.randperm(self.rows_per_rollout // u, generator=g)
        perm = (perm[:, None] * u + torch.arange(u)).flatten()  # whole units (u = 1: a permutation of the rows)
        start = minibatch * self.rows_per_step + micro * self.per_device
        return perm[start:start + self.per_device]

    def micro_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        roll = self.rollout(step // self.steps_per_rollout, rank)
        idx = self.rows(step, micro, rank)
        batch = {k: v[idx] for k, v in roll.tensors.items()}
        # drop columns that are padding in every row of this micro-batch (causal attention: nothing changes)
        mask = batch["action_mask"]
        C = int(mask.sum(-1).max())
        P_full = batch["input_ids"].shape[1] - mask.shape[1]
        P = int(batch["attention_mask"][:, :P_full].sum(-1).max())
        for k in ("input_ids", "attention_mask", "position_ids"):
            batch[k] = batch[k][:, P_full - P:P_full + C]
        for k in self.token_keys:
            batch[k] = batch[k][:, :C]
        batch = {k: v.to(self.device) for k, v in batch.items()}
        batch["rollout_metrics"] = roll.metrics
        return batch


def ppo_source(ctx) -> PPORollouts:
    """`Method.source` of PPO (takes `alignlib.loop.SourceContext`)."""
    return PPORollouts(ctx.policy, ctx.tokenizer, ctx.prompts, reward_fn=ctx.reward_fn, reference=ctx.reference,
                       config=ctx.config, **ctx.common())


# ----------------------------------------------------------------------------- dense rewards (RTO)
class DenseDPOReward:
    """RTO's reward (Zhong et al. 2024): a DPO policy's implicit reward β·log π_dpo/π_ref, given per token.

    A reward object for `PPORollouts`: called as `reward_fn(prompts, responses)`
    it returns the sequence-level score (`score_fn`'s, scaled by `score_coef`,
    or 0), and PPO adds `token_rewards(rows)` [N, C] to the KL-shaped token
    rewards (eq-ppo-reward) before GAE:

        r_t += β_dpo · (log π_dpo(y_t | s_t) − log π_ref(y_t | s_t))           (eq-rto-reward)

    `dense=False` puts the same log-ratio's *sum* on the last token instead,
    the sentence-level (bandit) use of the DPO reward that RTO compares with:
    equal return, different credit assignment. Any reward object with a
    `token_rewards(rows) -> [N, C]` method works the same way; `rows` is
    `rollout_layout`'s dict (CPU tensors).
    """

    def __init__(self, dpo_model, reference_model, beta: float, score_fn=None, score_coef: float = 1.0,
                 dense: bool = True, batch_size: int = 64):
        if beta <= 0:
            raise ValueError(f"beta (the DPO model's β) must be > 0, got {beta}")
        self.dpo, self.ref, self.beta = dpo_model, reference_model, beta
        self.score_fn, self.score_coef, self.dense, self.batch_size = score_fn, score_coef, dense, batch_size

    def __call__(self, prompts, responses):
        if self.score_fn is None:
            return [0.0] * len(prompts)
        return [self.score_coef * float(x) for x in self.score_fn(prompts, responses)]

    @torch.no_grad()
    def token_rewards(self, rows: dict) -> torch.Tensor:
        mask = rows["action_mask"]
        P = rows["input_ids"].shape[1] - mask.shape[1]
        out = []
        for start in range(0, mask.shape[0], self.batch_size):
            chunk = {k: v[start:start + self.batch_size] for k, v in rows.items() if k != "action_mask"}
            lps = []
            for model in (self.dpo, self.ref):
                device = next(model.parameters()).device
                logits = model(**{k: v.to(device) for k, v in chunk.items()}).logits
                lps.append(token_logprobs(logits, chunk["input_ids"].to(device))[:, P - 1:].float().cpu())
            out.append(lps[0] - lps[1])
        ratio = self.beta * torch.cat(out) * mask
        if self.dense:
            return ratio
        sparse = torch.zeros_like(ratio)
        last = (mask.shape[1] - 1 - mask.flip(-1).argmax(-1)).long()
        sparse[torch.arange(mask.shape[0]), last] = ratio.sum(-1)
        return sparse


# ----------------------------------------------------------------------------- the step
def ppo_step(ctx, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's loss on a micro-batch of a rollout: clipped surrogate + vf_coef · clipped value loss − entropy bonus.

        L = L_pg (eq-ppo-clip) + c_vf · L_vf (eq-ppo-value) − c_ent · H̄

    Per-token means over the micro-batch (TRL's PPO). Metrics: the losses, the
    clip fractions, the ratio, the entropy, and the rollout's score, KL and β.
    """
    c = ctx.config
    mask = batch["action_mask"]
    logprobs, values, logits = policy_and_values(ctx.model, batch)
    pg_loss, pg_metrics = ppo_policy_loss(logprobs, batch["old_logprobs"], batch["advantages"], mask,
                                          clip_range=c.cliprange)
    vf_loss, vf_metrics = ppo_value_loss(values, batch["old_values"], batch["returns"], mask,
                                         clip_range_value=c.cliprange_value)
    with torch.set_grad_enabled(c.entropy_coef > 0 and torch.is_grad_enabled()):
        entropy = masked_mean(entropy_from_logits(logits, mask), mask)
    loss = pg_loss + c.vf_coef * vf_loss - c.entropy_coef * entropy
    metrics = {"loss": loss.item(), "pg_loss": pg_loss.item(), "vf_loss": vf_loss.item(),
               "clipfrac": pg_metrics["policy/clipfrac_avg"], "approxkl": pg_metrics["policy/approxkl_avg"],
               "ratio": pg_metrics["val/ratio"], "vf_clipfrac": vf_metrics["val/clipfrac_avg"],
               "entropy": entropy.item(), **batch["rollout_metrics"]}
    return loss, metrics
