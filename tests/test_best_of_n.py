"""Chapter 1's claims about best-of-n, asserted on gold judgement.

* best-of-16 against the gold reward beats best-of-1 (plain SFT sampling) on the
  eval prompts by more than the sampling noise, and wins more than half of its
  gold comparisons against SFT samples, for three seeds;
* the analytic KL (eq-bon-kl) is log n − (n − 1)/n, 0 at n = 1, increasing;
* `best_of_n` returns, per prompt, the first of its n samples with the highest reward.
"""

from __future__ import annotations

import math

import pytest

from alignlib.evaluate import mean_ci
from alignlib.rollout import best_of_n, best_of_n_kl, sample

SAMPLES_PER_PROMPT = 8
MAX_NEW_TOKENS = 32


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_of_16_beats_sft_on_gold(pocket_reviews, reviews_world, seed):
    model, tokenizer = pocket_reviews
    world = reviews_world
    prompts = [p for p in world.prompts("eval") for _ in range(SAMPLES_PER_PROMPT)]

    bo1 = best_of_n(model, tokenizer, prompts, 1, world.gold_reward, seed=seed, max_new_tokens=MAX_NEW_TOKENS)
    bo16 = best_of_n(model, tokenizer, prompts, 16, world.gold_reward, seed=seed, max_new_tokens=MAX_NEW_TOKENS)
    sft = sample(model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS, seed=seed + 1000).texts

    g1, ci1 = mean_ci(world.gold_reward(prompts, bo1))
    g16, ci16 = mean_ci(world.gold_reward(prompts, bo16))
    assert g16 - g1 > ci1 + ci16, (
        f"seed {seed}: best-of-16 gold reward {g16:.3f} ± {ci16:.3f} does not beat "
        f"best-of-1 {g1:.3f} ± {ci1:.3f} by more than the noise"
    )

    win, win_ci = mean_ci(world.gold_verdict(prompts, bo16, sft))
    assert win > 0.5 + win_ci, f"seed {seed}: best-of-16 win rate vs SFT {win:.3f} ± {win_ci:.3f} is not above 0.5"


def test_best_of_n_kl_formula():
    for n in (1, 2, 3, 4, 8, 16, 32, 100):
        assert best_of_n_kl(n) == pytest.approx(math.log(n) - (n - 1) / n, abs=1e-12)
    assert best_of_n_kl(1) == 0.0
    values = [best_of_n_kl(n) for n in range(1, 129)]
    assert all(b > a for a, b in zip(values, values[1:])), "KL bound must increase strictly with n"
    # it never exceeds the trivial bound log n (π_bon ≤ n π_ref)
    assert all(v <= math.log(n) for n, v in enumerate(values, start=1))


@pytest.mark.parametrize("n", [0, -1, -16])
def test_best_of_n_rejects_n_below_one(pocket_reviews, reviews_world, n):
    model, tokenizer = pocket_reviews
    with pytest.raises(ValueError, match="n must be"):
        best_of_n_kl(n)
    with pytest.raises(ValueError, match="n must be"):
        best_of_n(model, tokenizer, ["review the pizza :"], n, reviews_world.gold_reward, seed=0)


def test_best_of_n_returns_the_max_reward_sample(pocket_reviews, reviews_world):
    """With a deterministic reward (length in words), the pick is the first longest of each prompt's n samples."""
    model, tokenizer = pocket_reviews
    prompts = reviews_world.prompts("eval")[:5]
    n = 8
    seen: list[tuple[list[str], list[str]]] = []

    def length_reward(ps, responses):
        seen.append((list(ps), list(responses)))
        return [len(r.split()) for r in responses]

    best = best_of_n(model, tokenizer, prompts, n, length_reward, seed=0, max_new_tokens=MAX_NEW_TOKENS)

    assert len(seen) == 1, "the reward should be called once, on all n × prompts samples"
    scored_prompts, responses = seen[0]
    assert len(best) == len(prompts) and len(responses) == n * len(prompts)
    for i, prompt in enumerate(prompts):
        block = responses[i * n : (i + 1) * n]
        assert scored_prompts[i * n : (i + 1) * n] == [prompt] * n, "samples must be grouped per prompt"
        lengths = [len(r.split()) for r in block]
        assert len(set(block)) > 1, "n samples of one prompt should differ (pure sampling)"
        assert best[i] == block[lengths.index(max(lengths))]
