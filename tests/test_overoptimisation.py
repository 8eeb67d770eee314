"""Over-optimisation of a learned reward, measured on gold judgement (the reward-models chapter's headline).

Three proxy reward models (seeds 0, 1, 2; 1024 gold-oracle pairs each, as in the
chapter) are optimised against in two ways:

* RL (GRPO, no KL penalty, 200 steps): the proxy reward of the policy keeps rising
  while its gold reward peaks and then falls; asserted for the mean over the
  seeds and for at least two of the three.
* best-of-n up to n = 256 on the eval prompts: an ensemble of the three
  proxies (mean, WCO, UWO) selects answers with higher gold reward at the
  largest n than the single proxies do on average (Coste et al.).
"""

from __future__ import annotations

import statistics

import pytest
import torch

from alignlib.config import TrainConfig
from alignlib.loop import train
from alignlib.losses.reward import ensemble_reward
from alignlib.overoptimisation import best_of_n_pool, optimise_against
from alignlib.reward_model import RewardModel
from alignlib.rollout import sample

SEEDS = (0, 1, 2)
FALL = 0.25  # a gold drop this large is ~3× the 95% half-width of one gold evaluation (≈ 0.09 here)


@pytest.fixture(scope="module")
def proxies(tmp_path_factory, pocket_reviews):
    policy, tok = pocket_reviews
    root = tmp_path_factory.mktemp("proxies")
    normaliser = sample(policy, tok, [p for p in __import__("alignlib").get_world("reviews").prompts("train")
                                      for _ in range(8)], seed=7)
    out = []
    for seed in SEEDS:
        cfg = TrainConfig(method="reward", output_dir=str(root / f"rm{seed}"), max_steps=300, learning_rate=1e-3,
                          per_device_train_batch_size=32, num_examples=1024, seed=seed, save_steps=0,
                          progress=False, logging_steps=0)
        run = train(cfg)
        out.append(RewardModel(run.model, run.tokenizer).normalise_under(normaliser.prompts, normaliser.texts))
    return out


def test_rl_against_a_single_proxy_overoptimises(proxies, reviews_world, tmp_path):
    drops = []
    for seed, proxy in zip(SEEDS, proxies):
        cfg = TrainConfig(method="grpo", output_dir=str(tmp_path / f"grpo{seed}"), max_steps=200, learning_rate=2e-4,
                          per_device_train_batch_size=8, samples_per_prompt=4, beta=0.0, save_steps=25,
                          progress=False, logging_steps=0)
        records = optimise_against(proxy, cfg, reviews_world, eval_every=50)
        peak = max(records, key=lambda r: r["gold"])
        drops.append(peak["gold"] - records[-1]["gold"])
        print(f"proxy {seed}: " + ", ".join(f"step {r['step']}: gold {r['gold']:+.2f} proxy {r['proxy']:+.2f} "
                                           f"KL {r['kl']:.1f}" for r in records))
        assert records[-1]["proxy"] > records[0]["proxy"] + 0.5  # the optimiser does raise what it is given
    print(f"gold drops from peak: {[round(d, 3) for d in drops]}")
    assert statistics.fmean(drops) > FALL
    assert sum(d > FALL for d in drops) >= 2


def test_ensembles_select_better_answers_at_large_n(proxies, pocket_reviews, reviews_world):
    policy, tok = pocket_reviews
    ns = [1, 4, 16, 64, 256]
    pool = best_of_n_pool(policy, tok, reviews_world, reviews_world.prompts("eval"), pool_size=256, seed=1234)
    scores = torch.tensor([pool.score(p) for p in proxies])
    singles = [pool.gold_curve(s.tolist(), ns)[-1] for s in scores]
    ensembles = {mode: pool.gold_curve(ensemble_reward(scores, mode).tolist(), ns)[-1] for mode in ("mean", "wco", "uwo")}
    oracle = pool.gold_curve(pool.gold, ns)[-1]
    print(f"gold of best-of-256: singles {[round(s, 3) for s in singles]}, ensembles "
          f"{ {m: round(v, 3) for m, v in ensembles.items()} }, selecting by gold {oracle:.3f}")
    for mode, value in ensembles.items():
        assert value > statistics.fmean(singles), mode
    assert all(v < oracle for v in [*singles, *ensembles.values()])
