"""Online and iterative DPO beyond plain sampling: XPO, SELM, online CoPG and APO (chapter 4b).

Everything here plugs into the one loop (`alignlib.loop.train`): a batch source
(a subclass of `alignlib.online.OnlinePairs`, registered through `Method.source`)
and a step that applies a pure loss of `alignlib.losses.pairwise`.

    xpo   ExplorationPairs  a judged pair plus y' ~ π_ref per prompt; DPO + α·ℓ_θ(y')
                            (`xpo_loss`: the exploration bonus pushes ℓ_θ down on what
                            π_ref says, i.e. raises KL(π_ref ‖ π_θ)).
    selm  ExplorationPairs  the same batch; DPO + αβ·[ℓ_θ(y') − ℓ_ref(y')] (`selm_loss`).
    copg  OnlinePairs       two policy samples with their rewards R(y), R(y'); CoPG's
                            squared residual (`copg_loss`), no judge needed.

Which pair is judged (`config.xpo_pairs`):

    "reference"  (y, y') with y ~ π_θ and y' ~ π_ref, judged against each other: the
                 paper's Algorithm 1 (Xie et al. 2024) and TRL's former XPOTrainer.
                 The bonus reads ℓ_θ of the reference sample of the pair.
    "policy"     the two policy samples of `OnlinePairs`, drawn and judged exactly as
                 online DPO draws them, plus a third sample y' ~ π_ref read only by the
                 bonus. With α = 0 this *is* online DPO, step for step.

APO (He, Yuan & Gu 2024) is an outer loop, `accelerated_iterate`: rounds of
iterative online DPO, each round trained by `train` with the round's starting
model as its reference, and between rounds the Nesterov extrapolation
θ̃_{t+1} = θ_{t+1} + α(θ_{t+1} − θ_t) (`apo_extrapolate`) of the weights.

Sampling is seeded by (seed, step, micro-step, process) as in `alignlib.online`;
the π_ref sample of a micro-batch uses `sampling_seed(...) + 2`, so a resumed
run draws exactly what an uninterrupted one draws.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from .data import collate
from .logprobs import sequence_logprobs
from .losses.pairwise import apo_extrapolate, copg_loss, selm_loss, xpo_loss
from .online import OnlinePairs, judge_by_oracle, judge_by_reward, sampling_seed
from .rollout import Samples, sample

PAIRINGS = ("reference", "policy")


# ------------------------------------------------------------------ batch source
class ExplorationPairs(OnlinePairs):
    """Judged pairs (B chosen rows, then B rejected rows) plus one π_ref sample per prompt.

    The π_ref samples travel as `explore_input_ids`, `explore_attention_mask`,
    `explore_completion_mask` [B, T'] (their own padding, so the pair rows are
    collated exactly as `OnlinePairs` collates them). `pairs` is "reference" (judge
    y ~ π_θ against y' ~ π_ref, as XPO's Algorithm 1) or "policy" (judge two policy
    samples, as online DPO; y' is read only by the bonus). `reference` is the loop's
    `models.Reference` (a separate frozen model, or the adapters-off base with --lora).
    """

    def __init__(self, *args, reference, pairs: str = "reference", **kwargs):
        super().__init__(*args, **kwargs)
        if pairs not in PAIRINGS:
            raise ValueError(f"pairs must be one of {PAIRINGS}, got {pairs!r}")
        if reference is None or getattr(reference, "precomputed", False):
            raise ValueError("XPO/SELM sample from π_ref at every step: they need the reference model itself "
                             "(not precomputed log-probs)")
        self.reference, self.pairs = reference, pairs

    def reference_samples(self, prompts: list[str], step: int, micro: int, rank: int) -> Samples:
        """Return one completion per prompt drawn from π_ref, seeded by sampling_seed(seed, step, micro, rank) + 2."""
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        policy = self.policy()
        with torch.random.fork_rng(devices=devices), self.reference.context(policy) as ref:
            return sample(ref, self.tokenizer, prompts, max_new_tokens=self.max_new_tokens,
                          temperature=self.temperature, seed=sampling_seed(self.seed, step, micro, rank) + 2)

    def micro_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        prompts = self.step_prompts(step, micro, rank)
        ref = self.reference_samples(prompts, step, micro, rank)
        explore = collate(list(zip(ref.prompt_ids, ref.completion_ids)), self.tokenizer.pad_token_id)
        explore = {f"explore_{k}": v.to(self.device) for k, v in explore.items()}
        if self.pairs == "policy":  # online DPO's batch, untouched, plus the π_ref rows
            return {**super().micro_batch(step, micro, rank), **explore}
        mine = self._sample(prompts, step, micro, rank)
        mine_wins = self.judge(prompts, mine.texts, ref.texts, sampling_seed(self.seed, step, micro, rank) + 1)
        rows_m = list(zip(mine.prompt_ids, mine.completion_ids))
        rows_r = list(zip(ref.prompt_ids, ref.completion_ids))
        chosen = [m if w else r for m, r, w in zip(rows_m, rows_r, mine_wins)]
        rejected = [r if w else m for m, r, w in zip(rows_m, rows_r, mine_wins)]
        extra = {"policy_won": torch.tensor([float(w) for w in mine_wins])}
        if self.reward_fn is not None:  # scores of the pair (chosen then rejected), for the training curves
            texts_c = [m if w else r for m, r, w in zip(mine.texts, ref.texts, mine_wins)]
            texts_r = [r if w else m for m, r, w in zip(mine.texts, ref.texts, mine_wins)]
            extra["scores"] = torch.tensor([float(x) for x in self.reward_fn(prompts + prompts, texts_c + texts_r)])
        return {**self._tensors(chosen + rejected, **extra), **explore}


def _judge(config, reward_fn):
    from .worlds import get_world

    if config.judge == "oracle":
        return judge_by_oracle(get_world(config.world), config.label_noise)
    return judge_by_reward(reward_fn)


def exploration_source(ctx) -> ExplorationPairs:
    """`Method.source` of xpo and selm: judged pairs (config.xpo_pairs) plus a π_ref sample per prompt."""
    return ExplorationPairs(ctx.policy, ctx.tokenizer, ctx.prompts, judge=_judge(ctx.config, ctx.reward_fn),
                            reward_fn=ctx.reward_fn, reference=ctx.reference, pairs=ctx.config.xpo_pairs,
                            **ctx.common())


def copg_source(ctx) -> OnlinePairs:
    """`Method.source` of copg: two policy samples per prompt with their rewards (the higher first)."""
    return OnlinePairs(ctx.policy, ctx.tokenizer, ctx.prompts, judge=judge_by_reward(ctx.reward_fn),
                       reward_fn=ctx.reward_fn, **ctx.common())


# ------------------------------------------------------------------ steps
def _logps(model, batch, prefix=""):
    return sequence_logprobs(model, batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"],
                             batch[f"{prefix}completion_mask"])[0]


def _pair_logps(ctx, batch):
    """Return policy and reference ℓ of the 2B pair rows: (ℓ_θ, ℓ_ref), each [2B]."""
    logps = _logps(ctx.model, batch)
    with torch.no_grad(), ctx.reference.context(ctx.model) as ref:
        ref_logps = _logps(ref, batch)
    return logps, ref_logps


def _explore_logps(ctx, batch, with_reference: bool):
    """Return ℓ_θ(y') [B] (with gradient) and, if asked, ℓ_ref(y') [B] of the π_ref samples."""
    logps = _logps(ctx.model, batch, "explore_")
    if not with_reference:
        return logps, None
    with torch.no_grad(), ctx.reference.context(ctx.model) as ref:
        return logps, _logps(ref, batch, "explore_")


def _common_metrics(batch, logps, ref_logps) -> dict[str, float]:
    out = {}
    if "scores" in batch:
        out["score"] = batch["scores"].mean().item()
    if "policy_won" in batch:
        out["policy_won"] = batch["policy_won"].mean().item()
    if ref_logps is not None:  # − mean ρ(y'), y' ~ π_ref: a Monte-Carlo estimate of KL(π_ref ‖ π_θ)
        out["explore_kl_ref_policy"] = (ref_logps - logps).detach().mean().item()
    return out


def xpo_step(ctx, batch):
    """XPO (`xpo_loss`, α = config.xpo_alpha, β = config.beta) on an `ExplorationPairs` batch."""
    logps, ref_logps = _pair_logps(ctx, batch)
    b = len(logps) // 2
    explore, explore_ref = _explore_logps(ctx, batch, with_reference=True)
    loss, metrics = xpo_loss(logps[:b], logps[b:], ref_logps[:b], ref_logps[b:], beta=ctx.config.beta,
                             alpha=ctx.config.xpo_alpha, policy_ref_sample_logps=explore)
    return loss, {"loss": loss.item(), **metrics, "explore_logp": explore.detach().mean().item(),
                  **_common_metrics(batch, explore, explore_ref)}


def selm_step(ctx, batch):
    """SELM (`selm_loss`, α = config.selm_alpha, β = config.beta) on an `ExplorationPairs` batch."""
    logps, ref_logps = _pair_logps(ctx, batch)
    b = len(logps) // 2
    explore, explore_ref = _explore_logps(ctx, batch, with_reference=True)
    loss, metrics = selm_loss(logps[:b], logps[b:], ref_logps[:b], ref_logps[b:], beta=ctx.config.beta,
                              alpha=ctx.config.selm_alpha, policy_ref_sample_logps=explore,
                              ref_ref_sample_logps=explore_ref)
    return loss, {"loss": loss.item(), **metrics, "explore_logp": explore.detach().mean().item(),
                  **_common_metrics(batch, explore, explore_ref)}


def copg_step(ctx, batch):
    """Online CoPG (`copg_loss`, β = config.beta) on two policy samples per prompt and their rewards."""
    if "scores" not in batch:
        raise ValueError("copg needs a reward for each completion (batch['scores']); the copg source adds them")
    logps, ref_logps = _pair_logps(ctx, batch)
    b = len(logps) // 2
    rewards = batch["scores"].to(logps.dtype)
    loss, metrics = copg_loss(logps[:b], logps[b:], ref_logps[:b], ref_logps[b:], beta=ctx.config.beta,
                              chosen_rewards=rewards[:b], rejected_rewards=rewards[b:])
    return loss, {"loss": loss.item(), **metrics, "score": rewards.mean().item()}


# ------------------------------------------------------------------ APO: the outer loop
def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def accelerated_iterate(config, model, tokenizer, rounds: int, alpha: float | None = None, dataset=None,
                        callback: Callable | None = None) -> list:
    """Run `rounds` of iterative online DPO with APO's Nesterov extrapolation between them; return the results.

    Round t (t = 0, 1, ...) starts from π̃_t and trains with `reference_model` = a
    frozen copy of π̃_t, by `alignlib.train` in `<output_dir>/round-<t>` with seed
    `config.seed + 1000·t`; it ends at θ_{t+1}. Then

        θ̃_{t+1} = θ_{t+1} + α (θ_{t+1} − θ_t)

    with θ_0 = θ̃_0 the initial weights (He, Yuan & Gu 2024, Alg. 1, taken in weight
    space, as chapter 4b's "What we implement" says; (eq-ch4b-apo) is the log-space form).
    α = 0 is iterative DPO with the
    previous iterate as reference (default α: `config.apo_alpha`). `config.method` is any pairwise online method
    (online_dpo, xpo, selm). `callback(t, result, extrapolated)` gets the trained
    result (θ_{t+1}) and a frozen model holding θ̃_{t+1}. Each round resumes from its own
    checkpoints, so an interrupted run continues where it stopped. The returned
    results hold θ_{t+1}; the model the next round starts from is θ̃_{t+1}.
    """
    from .loop import train
    from .models import frozen_copy

    alpha = config.apo_alpha if alpha is None else alpha
    if rounds < 1:
        raise ValueError(f"rounds must be ≥ 1, got {rounds}")
    if alpha < 0:
        raise ValueError(f"APO's momentum α must be ≥ 0 (0 = iterative DPO), got {alpha}")
    if config.lora:
        raise ValueError("accelerated_iterate resets the reference to each round's start, which --lora's "
                         "adapters-off base cannot be; train all weights")
    if model is None or tokenizer is None:
        raise ValueError("pass the starting policy and its tokenizer (e.g. alignlib.pocket.load_pocket(world))")
    root = Path(config.output_dir)
    previous = _weights(model)  # θ_0
    results = []
    for t in range(rounds):
        round_config = dataclasses.replace(config, output_dir=str(root / f"round-{t}"), seed=config.seed + 1000 * t)
        result = train(round_config, model=model, tokenizer=tokenizer, reference_model=frozen_copy(model),
                       dataset=dataset)
        trained = _weights(result.model)  # θ_{t+1}
        results.append(result)
        nxt = frozen_copy(result.model)
        nxt.load_state_dict(apo_extrapolate(trained, previous, alpha))
        if callback is not None:
            callback(t, result, nxt)
        previous = trained
        model = frozen_copy(nxt).train().requires_grad_(True)
    return results


# ------------------------------------------------------------------ exploration measures
@torch.no_grad()
def sample_diversity(policy, reference, tokenizer, prompts, samples_per_prompt: int = 8, max_new_tokens: int = 24,
                     seed: int = 0) -> dict[str, float]:
    """Return coverage and diversity measures of `policy` on `prompts` (k samples each, pure sampling).

    distinct   mean over prompts of (distinct completions among the k) / k
    entropy    Monte-Carlo sequence entropy −E_{y~π} log π(y|x), nats
    kl_ref     Monte-Carlo KL(π_ref ‖ π) = E_{y~π_ref}[log π_ref(y) − log π(y)], nats: how much
               mass π took away from what π_ref says (what XPO's bonus raises)
    """
    from .evaluate import completion_logprobs

    k = samples_per_prompt
    repeated = [p for p in prompts for _ in range(k)]
    mine = sample(policy, tokenizer, repeated, max_new_tokens=max_new_tokens, seed=seed)
    groups = [mine.texts[i:i + k] for i in range(0, len(mine.texts), k)]
    distinct = sum(len(set(g)) / k for g in groups) / len(groups)
    entropy = -completion_logprobs(policy, mine, tokenizer.pad_token_id).mean().item()
    theirs = sample(reference, tokenizer, repeated, max_new_tokens=max_new_tokens, seed=seed + 1)
    kl_ref = (completion_logprobs(reference, theirs, tokenizer.pad_token_id)
              - completion_logprobs(policy, theirs, tokenizer.pad_token_id)).mean().item()
    return {"distinct": distinct, "entropy": entropy, "kl_ref": kl_ref}


__all__ = ["ExplorationPairs", "exploration_source", "copg_source", "xpo_step", "selm_step", "copg_step",
           "accelerated_iterate", "sample_diversity"]
