"""Over-optimisation, measured: best-of-n against a proxy reward, judged by the gold reward.

One pool of N samples per prompt from the SFT policy gives the whole best-of-n
curve for every n ≤ N (`best_of_n_expectation`), for any number of proxies, at
the cost of scoring the pool once per proxy. KL(best-of-n ‖ π_ref) is the
analytic log n − (n − 1)/n (`alignlib.rollout.best_of_n_kl`), so the curves are
drawn against KL as in Gao et al. (2023), "Scaling Laws for Reward Model
Overoptimization".
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

from .rollout import sample

def best_of_n_expectation(selection_scores: Sequence[float], values: Sequence[float], n: int) -> float:
    """Return E[value of the best-by-score of n responses drawn without replacement from these N] (exact).

    With the N responses sorted by score ascending (ties broken by position),
    the i-th (1-based) is the best of a random n-subset with probability
    C(i−1, n−1) / C(N, n), so

        E_n = Σ_i C(i−1, n−1) / C(N, n) · value_(i)                         (eq-bon-estimator)

    This uses all N samples for every n ≤ N (the unbiased estimator of
    Nakano et al. 2021, App. I, used by Gao et al. 2023), so one pool of
    N = 256 samples per prompt gives the whole best-of-n curve with low variance.
    """
    N = len(selection_scores)
    if len(values) != N:
        raise ValueError(f"{N} scores but {len(values)} values")
    if not 1 <= n <= N:
        raise ValueError(f"n must be in [1, {N}] (the pool size), got {n}")
    order = sorted(range(N), key=lambda i: (selection_scores[i], i))
    log_total = math.lgamma(N + 1) - math.lgamma(n + 1) - math.lgamma(N - n + 1)
    expectation = 0.0
    for rank, i in enumerate(order, 1):  # rank = i in the formula
        if rank < n:
            continue
        log_ways = math.lgamma(rank) - math.lgamma(n) - math.lgamma(rank - n + 1)
        expectation += math.exp(log_ways - log_total) * values[i]
    return expectation


def best_of_n_curve(pools: Sequence[tuple[Sequence[float], Sequence[float]]], ns: Sequence[int]) -> list[float]:
    """Return, for each n, the mean over prompts of `best_of_n_expectation` (pools: (scores, values) per prompt)."""
    return [statistics.fmean(best_of_n_expectation(s, v, n) for s, v in pools) for n in ns]




@dataclass
class BestOfNPool:
    """N samples per prompt (prompt-major: rows i·N … i·N + N − 1 answer prompt i) and their gold rewards."""

    prompts: list[str]  # one per row
    texts: list[str]
    gold: list[float]
    pool_size: int

    @property
    def num_prompts(self) -> int:
        return len(self.prompts) // self.pool_size

    def _pools(self, scores: Sequence[float], values: Sequence[float]):
        n = self.pool_size
        return [(scores[i * n:(i + 1) * n], values[i * n:(i + 1) * n]) for i in range(self.num_prompts)]

    def score(self, reward_fn: Callable[[Sequence[str], Sequence[str]], Sequence[float]]) -> list[float]:
        """Return `reward_fn` on every row of the pool."""
        return list(reward_fn(self.prompts, self.texts))

    def gold_curve(self, scores: Sequence[float], ns: Sequence[int]) -> list[float]:
        """Mean gold reward of best-of-n selected by `scores` (one per row), for each n."""
        return best_of_n_curve(self._pools(scores, self.gold), ns)

    def proxy_curve(self, scores: Sequence[float], ns: Sequence[int]) -> list[float]:
        """Mean selecting score of best-of-n, for each n: what the optimiser believes it gets."""
        return best_of_n_curve(self._pools(scores, scores), ns)


def best_of_n_pool(policy, tokenizer, world, prompts: Sequence[str], pool_size: int, seed: int,
                   max_new_tokens: int = 32) -> BestOfNPool:
    """Sample `pool_size` completions for each prompt from `policy` (pure sampling) and score them by gold reward."""
    repeated = [p for p in prompts for _ in range(pool_size)]
    s = sample(policy, tokenizer, repeated, max_new_tokens=max_new_tokens, seed=seed)
    return BestOfNPool(repeated, s.texts, world.gold_reward(repeated, s.texts), pool_size)


def drop_from_peak(curve: Sequence[float]) -> float:
    """Return max(curve) − curve[-1]: how far the value at the largest n has fallen below the best n (≥ 0).

    Biased upwards on noisy curves (the max of noise is positive); see `cross_fitted_drop`.
    """
    return max(curve) - curve[-1]


def cross_fitted_drop(pool: BestOfNPool, scores: Sequence[float], ns: Sequence[int]) -> float:
    """Return the gold drop from the best n to the largest n, with the best n chosen on the *other* prompts.

    The prompts are split into two halves (even and odd positions); the peak n*
    is picked on one half's gold curve and the drop gold(n*) − gold(n_max) is
    measured on the other half, and the two directions are averaged. Unlike
    `drop_from_peak` this is not biased upwards by noise: on a curve that only
    rises it is ≤ 0 on average, so a positive value is evidence of a real fall.
    """
    halves = [list(range(0, pool.num_prompts, 2)), list(range(1, pool.num_prompts, 2))]
    if not all(halves):
        raise ValueError("cross-fitting needs at least 2 prompts in the pool")
    n = pool.pool_size
    curves = [best_of_n_curve([(scores[i * n:(i + 1) * n], pool.gold[i * n:(i + 1) * n]) for i in half], ns)
              for half in halves]
    drops = []
    for pick, measure in ((0, 1), (1, 0)):
        best = max(range(len(ns)), key=lambda j: curves[pick][j])
        drops.append(curves[measure][best] - curves[measure][-1])
    return statistics.fmean(drops)


def optimise_against(reward_fn, config, world, eval_every: int, samples_per_prompt: int = 8,
                     seed: int = 3) -> list[dict[str, float]]:
    """Train `config` (an online method) against `reward_fn`; every `eval_every` steps record gold and proxy.

    The run is trained in chunks of `eval_every` steps, resuming from its own
    checkpoint each time (so `config.save_steps` should divide `eval_every`);
    after each chunk the policy answers the world's eval prompts
    (`samples_per_prompt` each) and we record the mean gold reward (with its 95%
    interval), the mean proxy reward, KL(π‖π_ref) and the grammatical fraction.
    Returns one record per chunk, starting with step 0 (the SFT policy).
    """
    import dataclasses

    from .evaluate import evaluate_policy
    from .loop import train

    records = []
    for step in range(0, config.max_steps + 1, eval_every):
        if step == 0:
            from .models import load_tokenizer_and_model

            model, tokenizer = load_tokenizer_and_model(config.model, config.world)
            reference = model
        else:
            result = train(dataclasses.replace(config, max_steps=step), reward_fn=reward_fn)
            model, tokenizer, reference = result.model, result.tokenizer, result.reference
        ev = evaluate_policy(model, reference, tokenizer, world, samples_per_prompt=samples_per_prompt,
                             max_new_tokens=config.max_new_tokens, seed=seed)
        answers = sample(model, tokenizer, [p for p in world.prompts("eval") for _ in range(samples_per_prompt)],
                         max_new_tokens=config.max_new_tokens, seed=seed + 1)
        records.append({"step": step, "gold": ev.gold_reward, "gold_ci": ev.gold_reward_ci,
                        "proxy": statistics.fmean(reward_fn(answers.prompts, answers.texts)), "kl": ev.kl,
                        "grammatical": ev.grammatical})
    return records
