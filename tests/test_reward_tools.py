"""Learned rewards as callables, the exact best-of-n estimator, and bad scored input."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest
import torch

from alignlib.data import DataError, load_rows
from alignlib.overoptimisation import best_of_n_curve, best_of_n_expectation
from alignlib.reward_model import RewardEnsemble, RewardModel, check_scored_rows


def brute_force_best_of_n(scores, values, n):
    """Average, over every n-subset, the value of the subset's highest-score member (ties: earliest)."""
    picks = []
    for subset in itertools.combinations(range(len(scores)), n):
        best = max(subset, key=lambda i: (scores[i], i))
        picks.append(values[best])
    return statistics.fmean(picks)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_of_n_estimator_is_exact(seed):
    rng = random.Random(seed)
    scores = [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(9)]  # with ties
    values = [rng.gauss(0, 1) for _ in range(9)]
    for n in range(1, 10):
        assert best_of_n_expectation(scores, values, n) == pytest.approx(brute_force_best_of_n(scores, values, n),
                                                                         abs=1e-12)


def test_best_of_n_estimator_limits():
    values = [3.0, -1.0, 2.0, 0.5]
    scores = [0.1, 0.9, 0.4, 0.2]
    assert best_of_n_expectation(scores, values, 1) == pytest.approx(statistics.fmean(values))  # n = 1: plain mean
    assert best_of_n_expectation(scores, values, 4) == pytest.approx(-1.0)  # n = N: the top-score sample
    # selecting by the value itself can only help as n grows
    curve = best_of_n_curve([(values, values)], [1, 2, 3, 4])
    assert curve == sorted(curve) and curve[-1] == 3.0
    with pytest.raises(ValueError, match="pool size"):
        best_of_n_expectation(scores, values, 5)


class _LengthRM(torch.nn.Module):
    """A stand-in sequence classifier: the score is the number of real tokens."""

    def __init__(self):
        super().__init__()
        self.config = type("C", (), {"num_labels": 1})()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, input_ids, attention_mask):
        return type("O", (), {"logits": (attention_mask.sum(-1, keepdim=True).float() * self.w)})()


def test_reward_model_normalisation_and_ensembles(pocket_reviews):
    _, tok = pocket_reviews
    rm = RewardModel(_LengthRM(), tok)
    prompts = ["the food was"] * 4
    responses = ["good .", "very good .", "very very good .", "good good good good ."]
    raw = rm.raw_scores(prompts, responses)
    assert raw[1] - raw[0] == 1 and raw[3] - raw[0] == 3
    rm.normalise_under(prompts, responses)
    z = rm.scores(prompts, responses)
    assert z.mean().item() == pytest.approx(0, abs=1e-6) and z.std().item() == pytest.approx(1, abs=1e-6)

    shifted = RewardModel(_LengthRM(), tok)
    shifted.shift, shifted.scale = 2.0, 1.0
    ens = RewardEnsemble([rm, shifted])
    both = ens.member_scores(prompts, responses)
    assert ens(prompts, responses) == pytest.approx(both.mean(0).tolist())
    assert ens.with_mode("wco")(prompts, responses) == pytest.approx(both.min(0).values.tolist())
    uwo = ens.with_mode("uwo", uwo_lambda=2.0)(prompts, responses)
    assert uwo == pytest.approx((both.mean(0) - 2.0 * both.var(0, unbiased=False)).tolist())
    with pytest.raises(ValueError, match="unknown ensemble mode"):
        RewardEnsemble([rm], mode="median")
    with pytest.raises(ValueError, match="one prompt per response"):
        rm(prompts, responses[:2])
    with pytest.raises(ValueError, match="same score"):
        rm.normalise_under(prompts[:2], ["good .", "bad ."])


def test_pairs_with_identical_texts_are_refused():
    rows = [{"prompt": "p", "chosen": "a .", "rejected": "b ."}, {"prompt": "p", "chosen": "a .", "rejected": "a ."}]
    with pytest.raises(DataError, match="row 1: chosen and rejected are the same text"):
        load_rows(rows, "pairs")


def test_scored_rows_nan_and_identical():
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b", "chosen_score": 1.0, "rejected_score": 0.0},
        {"prompt": "p", "chosen": "a", "rejected": "a", "chosen_score": 1.0, "rejected_score": 0.0},
        {"prompt": "p", "chosen": "a", "rejected": "c", "chosen_score": math.nan, "rejected_score": 0.0},
    ]
    with pytest.raises(DataError, match="row 1: chosen and rejected are the same text"):
        check_scored_rows(rows)
    with pytest.raises(DataError, match="row 1: a score .* is NaN"):
        check_scored_rows(rows[:1] + rows[2:])
    kept, dropped = check_scored_rows(rows, on_bad="skip")
    assert kept == rows[:1] and dropped == {"identical": 1, "non_finite_score": 1}


def test_package_train_is_the_function_even_after_the_loop_module_is_imported():
    import alignlib
    import alignlib.loop  # noqa: F401  (importing a submodule must not shadow the function)

    from alignlib import train

    assert callable(train) and train.__name__ == "train"


def test_label_accuracy_ceiling_matches_simulated_labels(reviews_world):
    """The Bayes ceiling equals the accuracy of 'predict the likelier label' on many oracle draws."""
    prompts = ["review the pizza :"] * 3
    a = ["the pizza was great .", "the pizza was good .", "the pizza was bad ."]
    b = ["the pizza was awful .", "the pizza was fine .", "the pizza was bad . the pizza was bad ."]
    for noise in (0.0, 0.25):
        ceiling = reviews_world.label_accuracy_ceiling(prompts, a, b, noise)
        p = reviews_world.preference_probability(prompts, a, b)
        likely_a = [q >= 0.5 for q in p]
        hits = []
        for seed in range(400):
            labels = reviews_world.prefer(prompts, a, b, seed=seed, label_noise=noise)
            hits += [label == guess for label, guess in zip(labels, likely_a)]
        assert sum(hits) / len(hits) == pytest.approx(ceiling, abs=0.03)
    assert reviews_world.label_accuracy_ceiling(prompts, a, b, 0.5) == pytest.approx(0.5)


def test_preference_accuracy_against_labels_and_gold():
    from alignlib.reward_model import preference_accuracy

    def length_reward(prompts, responses):
        return [float(len(r)) for r in responses]

    rows = [{"prompt": "p", "chosen": "aaa", "rejected": "a", "chosen_gold": 1.0, "rejected_gold": 0.0},
            {"prompt": "p", "chosen": "a", "rejected": "aaa", "chosen_gold": 1.0, "rejected_gold": 0.0},
            {"prompt": "p", "chosen": "bb", "rejected": "cc", "chosen_gold": 0.0, "rejected_gold": 0.0},
            {"prompt": "p", "chosen": "b", "rejected": "ccc", "chosen_gold": 0.0, "rejected_gold": 2.0}]
    assert preference_accuracy(length_reward, rows) == pytest.approx((1 + 0 + 0.5 + 0) / 4)
    # against gold: row 3 (gold tie) is skipped; row 4 is mislabelled, and the reward orders it as gold does
    assert preference_accuracy(length_reward, rows, against="gold") == pytest.approx((1 + 0 + 1) / 3)


def test_cross_fitted_drop_sees_a_real_fall_and_not_noise():
    from alignlib.overoptimisation import BestOfNPool, cross_fitted_drop, drop_from_peak

    rng = random.Random(0)
    n, prompts, ns = 64, 40, [1, 4, 16, 64]
    # proxy = gold + a bonus on a rare 'exploit' that gold punishes: selecting hard on the proxy finds the exploit
    gold, proxy = [], []
    for _ in range(prompts * n):
        g = rng.gauss(0, 1)
        exploit = rng.random() < 0.03
        gold.append(g - (3.0 if exploit else 0.0))
        proxy.append(g + (4.0 if exploit else 0.0))
    pool = BestOfNPool(["p"] * (prompts * n), [""] * (prompts * n), gold, n)
    curve = pool.gold_curve(proxy, ns)
    assert curve[-1] < max(curve)
    assert cross_fitted_drop(pool, proxy, ns) > 0.5
    # an honest proxy (gold itself): the curve only rises, the cross-fitted drop is ~0, never clearly positive
    assert cross_fitted_drop(pool, gold, ns) <= 1e-9
    assert drop_from_peak(pool.gold_curve(gold, ns)) == 0.0
