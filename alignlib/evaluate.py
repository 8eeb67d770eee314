"""Gold-judgement evaluation of a policy against its reference.

Metric names are the book's (book/notation.md):
  gold_reward   mean gold reward of policy samples, with a 95% confidence interval
  win_rate      fraction of prompts where the gold judge prefers the policy's sample
                to the reference's sample (ties count 1/2), with a 95% interval
  kl            Monte-Carlo KL(π‖π_ref) in nats per completion: mean of
                log π(y|x) − log π_ref(y|x) over y ~ π (unbiased; can be slightly
                negative on few samples)
  grammatical   fraction of policy samples the world's checker accepts
  distinct_n    distinct n-grams / all n-grams over the policy samples
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from .data import collate
from .logprobs import sequence_logprobs
from .rollout import Samples, sample


@dataclass
class Evaluation:
    gold_reward: float
    gold_reward_ci: float  # half-width of the 95% interval
    ref_gold_reward: float
    win_rate: float
    win_rate_ci: float
    kl: float
    kl_ci: float
    grammatical: float
    ref_grammatical: float
    distinct_1: float
    distinct_2: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Return (mean, half-width of the normal-approximation 95% interval)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, float("nan")
    return m, 1.96 * statistics.stdev(values) / math.sqrt(len(values))


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Return distinct n-grams / total n-grams over all `texts` (0 when there are none)."""
    grams = [tuple(w[i : i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@torch.no_grad()
def completion_logprobs(model, samples: Samples, pad_token_id: int, batch_size: int = 256) -> torch.Tensor:
    """Return log π(y|x) [N] of the sampled completions under `model` (exact ids, no re-tokenising)."""
    device = next(model.parameters()).device
    out = []
    rows = list(zip(samples.prompt_ids, samples.completion_ids))
    for start in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collate(rows[start : start + batch_size], pad_token_id).items()}
        logps, _, _ = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        out.append(logps.float().cpu())
    return torch.cat(out)


def evaluate_policy(
    policy,
    reference,
    tokenizer,
    world,
    prompts: Sequence[str] | None = None,
    samples_per_prompt: int = 4,
    max_new_tokens: int = 32,
    seed: int = 0,
    reference_samples: Samples | None = None,
) -> Evaluation:
    """Return gold reward, win rate vs. `reference`, KL(π‖π_ref), fluency and diversity of `policy`.

    `prompts` default to the world's eval split; each is answered
    `samples_per_prompt` times by both models with pure sampling.
    `reference` is a model, or a context-manager-producing `models.Reference` with the policy.
    """
    from .models import Reference

    prompts = list(prompts if prompts is not None else world.prompts("eval"))
    repeated = [p for p in prompts for _ in range(samples_per_prompt)]
    ref = reference if isinstance(reference, Reference) else Reference(reference)
    pol = sample(policy, tokenizer, repeated, max_new_tokens=max_new_tokens, seed=seed)
    with ref.context(policy) as ref_model:
        if reference_samples is None:
            reference_samples = sample(ref_model, tokenizer, repeated, max_new_tokens=max_new_tokens, seed=seed + 1)
        ref_lp = completion_logprobs(ref_model, pol, tokenizer.pad_token_id)
    pol_lp = completion_logprobs(policy, pol, tokenizer.pad_token_id)
    gold = world.gold_reward(repeated, pol.texts)
    ref_gold = world.gold_reward(repeated, reference_samples.texts)
    wins = world.gold_verdict(repeated, pol.texts, reference_samples.texts)
    kl_terms = (pol_lp - ref_lp).tolist()
    g, g_ci = mean_ci(gold)
    w, w_ci = mean_ci(wins)
    kl, kl_ci = mean_ci(kl_terms)
    return Evaluation(
        gold_reward=g, gold_reward_ci=g_ci, ref_gold_reward=statistics.fmean(ref_gold),
        win_rate=w, win_rate_ci=w_ci, kl=kl, kl_ci=kl_ci,
        grammatical=statistics.fmean(world.is_grammatical(p, t) for p, t in zip(repeated, pol.texts)),
        ref_grammatical=statistics.fmean(world.is_grammatical(p, t) for p, t in zip(repeated, reference_samples.texts)),
        distinct_1=distinct_n(pol.texts, 1), distinct_2=distinct_n(pol.texts, 2), n=len(repeated),
    )
