"""Claims of the DPO-family chapter (chapters/04_dpo_family.ipynb), measured small-scale on gold judgement.

Per seed (0, 1, 2): 1024 oracle-labelled pairs of SFT samples; offline DPO and RPO
(α = 1) trained on exactly those pairs, and online DPO (fresh policy samples
labelled by the gold oracle every step), each 60 steps × 32 pairs at lr 1e-4,
β = 0.1 (the recipe of tests/test_dpo_effect.py, shortened).

Asserted:
* RPO keeps the chosen answers' log-probability higher than DPO does, measured on
  256 of the training pairs, on every seed (gradient entanglement, METHODS.md §3.14).
  Measured when this test was written (mean Δℓ(y_w) from π_ref, nats): DPO −0.19,
  −0.02, −0.17; RPO +0.13, +0.11, +0.13.
* Online DPO learns: its gold reward beats the SFT model's on every seed and its
  mean win rate is above 0.55. Online DPO is *not* asserted to beat offline DPO:
  at 60 steps the two were within each other's confidence intervals (win rates
  online 0.56/0.66/0.58, offline 0.58/0.62/0.56), so the chapter reports that, and
  this test prints both.
* DPO's per-token implicit reward β·log π_θ/π_ref puts the credit where gold's
  judgement is decided ("From r to Q*", METHODS.md §3.16): on the 256 probe pairs'
  answers, positive sentiment words get a positive mean credit, negative words a
  negative one, on every seed, and the two differ by more than 0.03.
* Bad input: identical chosen/rejected texts, unknown loss names and β ≤ 0 for the
  DPO methods raise clear errors.
"""

from __future__ import annotations

import statistics

import pytest

from alignlib.config import TrainConfig
from alignlib.data import DataError, load_rows
from alignlib.diagnostics import mean_credit_by_role, pair_logprobs, token_credit
from alignlib.evaluate import evaluate_policy
from alignlib.loop import train
from alignlib.rollout import world_dataset

SEEDS = (0, 1, 2)
RECIPE = dict(world="reviews", model="pocket", learning_rate=1e-4, max_steps=60, per_device_train_batch_size=32,
              num_examples=1024, beta=0.1, save_steps=0, progress=False, logging_steps=0, overwrite_output_dir=True)
PROBE = 256


@pytest.fixture(scope="module")
def runs(tmp_path_factory, pocket_reviews, reviews_world):
    """Per seed: Δℓ(y_w) of DPO and RPO on training pairs, and gold evaluations of offline and online DPO."""
    policy, tokenizer = pocket_reviews
    out = tmp_path_factory.mktemp("dpo-family")
    results = {}
    for seed in SEEDS:
        pairs = world_dataset(TrainConfig(**RECIPE, method="dpo", seed=seed), "pairs", policy, tokenizer)
        probe = pairs[:PROBE]
        ref_chosen, _ = pair_logprobs(policy, tokenizer, probe)
        res = {}
        for name, extra in [("dpo", dict(method="dpo")), ("rpo", dict(method="dpo", loss_type="rpo", rpo_alpha=1.0)),
                            ("online", dict(method="online_dpo", judge="oracle"))]:
            cfg = TrainConfig(**RECIPE, **extra, seed=seed, output_dir=str(out / f"{name}-{seed}"))
            run = train(cfg, dataset=None if name == "online" else pairs)
            chosen, _ = pair_logprobs(run.model, tokenizer, probe)
            res[f"{name}_d_chosen"] = (chosen - ref_chosen).mean().item()
            if name == "dpo":
                prompts = [r["prompt"] for r in probe for _ in range(2)]
                texts = [t for r in probe for t in (r["chosen"], r["rejected"])]
                res["credit"] = mean_credit_by_role(prompts, token_credit(run.model, policy, tokenizer, prompts, texts,
                                                                          beta=RECIPE["beta"]))
            if name != "rpo":
                res[f"{name}_eval"] = evaluate_policy(run.model, run.reference, tokenizer, reviews_world,
                                                      samples_per_prompt=16, seed=100 + seed)
        results[seed] = res
    return results


def test_rpo_keeps_chosen_logprob_higher_than_dpo(runs):
    for seed, res in runs.items():
        print(f"seed {seed}: mean Δℓ(y_w) on {PROBE} training pairs: DPO {res['dpo_d_chosen']:+.3f}, "
              f"RPO {res['rpo_d_chosen']:+.3f}")
    for seed, res in runs.items():
        assert res["rpo_d_chosen"] > res["dpo_d_chosen"] + 0.05, (seed, res["rpo_d_chosen"], res["dpo_d_chosen"])
        assert res["rpo_d_chosen"] > 0, seed  # RPO's likelihood term wins against entanglement here


def test_online_dpo_learns_and_gap_to_offline_is_reported(runs):
    for seed, res in runs.items():
        on, off = res["online_eval"], res["dpo_eval"]
        print(f"seed {seed}: online win {on.win_rate:.3f} ± {on.win_rate_ci:.3f} KL {on.kl:.2f} gold {on.gold_reward:+.3f}"
              f" | offline win {off.win_rate:.3f} ± {off.win_rate_ci:.3f} KL {off.kl:.2f} gold {off.gold_reward:+.3f}"
              f" | SFT gold {on.ref_gold_reward:+.3f}")
    for seed, res in runs.items():
        on = res["online_eval"]
        assert on.gold_reward > on.ref_gold_reward, seed
        assert on.kl > 0, seed
        assert on.grammatical >= 0.8, seed
    assert statistics.fmean(res["online_eval"].win_rate for res in runs.values()) > 0.55


def test_dpo_token_credit_lands_on_sentiment_words(runs):
    for seed, res in runs.items():
        print(f"seed {seed}: mean per-token implicit reward by role: "
              + ", ".join(f"{role} {mean:+.4f} (n={n})" for role, (mean, n) in res["credit"].items()))
    for seed, res in runs.items():
        positive, negative = res["credit"]["positive word"][0], res["credit"]["negative word"][0]
        assert positive > 0 > negative, (seed, positive, negative)
        assert positive - negative > 0.03, (seed, positive, negative)


def test_identical_pair_is_refused():
    with pytest.raises(DataError, match="same text"):
        load_rows([{"prompt": "review the pizza :", "chosen": "it was good .", "rejected": "it was good ."}], "pairs")


def test_unknown_loss_type_is_refused():
    with pytest.raises(ValueError, match="unknown loss_type 'dpoo'"):
        TrainConfig(method="dpo", loss_type="dpoo")


@pytest.mark.parametrize("method", ["dpo", "online_dpo"])
@pytest.mark.parametrize("beta", [0.0, -0.1])
def test_non_positive_beta_is_refused(method, beta):
    with pytest.raises(ValueError, match="beta"):
        TrainConfig(method=method, beta=beta)
