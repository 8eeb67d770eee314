"""Diverse preferences: the two-populations world, EM over a mixture of BT models, MaxMin reward, DPA directions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignlib.diverse import (
    assignment_accuracy,
    check_direction,
    directional_scores,
    em_mixture,
    fit_bt,
    fit_reward_model,
    maxmin_reward,
    mixture_objective,
    pair_differences,
    style_features,
    true_groups,
)
from alignlib.worlds import get_world
from alignlib.worlds.two_populations import TwoPopulationsWorld


@pytest.fixture(scope="module")
def world():
    return get_world("two_populations")


def test_world_groups_disagree_and_gold_is_their_weighted_mean(world):
    x = "describe the lake :"
    formal, casual = "the lake is tranquil . it offers excellent views .", "the lake is super fun !"
    mixed = "the lake is tranquil . you will love the lake !"
    r_formal, r_casual = world.group_rewards([x] * 3, [formal, casual, mixed])
    assert r_formal == pytest.approx([1.0, 0.0, 0.5 ** 0.5]) and r_casual == pytest.approx([0.0, 1.0, 0.5 ** 0.5])
    gold = world.gold_reward([x] * 3, [formal, casual, mixed])
    assert gold == pytest.approx([0.8 * a + 0.2 * b for a, b in zip(r_formal, r_casual)])
    # shared faults cost both groups: a broken sentence, a repeat, another place
    broken = world.group_rewards([x], [formal + " the lake is"])
    assert broken[0][0] < 1.0 and broken[1][0] < 0.0
    assert world.is_grammatical(x, mixed) and not world.is_grammatical(x, "lake the is .")
    with pytest.raises(ValueError, match="group_weights"):
        TwoPopulationsWorld(group_weights=(0.5, 0.6))
    # the direction header is read past when finding the topic
    assert world.group_rewards([world.directed_prompt(x, (0.0, 1.0))], [casual])[1] == pytest.approx([1.0])


def test_bt_fit_is_the_exact_maximiser(world):
    rows = world.annotated_pairs(30, 4, seed=0)
    diffs = pair_differences(world, rows)
    theta = fit_bt(diffs, l2=1.0)
    # gradient of the penalised log-likelihood vanishes at the fit
    p = 1 / (1 + np.exp(-(diffs @ theta)))
    assert np.abs(diffs.T @ (1 - p) - theta).max() < 1e-6
    # features: one one-hot cell per response plus three fault counts
    feats = style_features(world, [r["prompt"] for r in rows], [r["chosen"] for r in rows])
    assert (feats[:, :-3].sum(1) == 1).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_em_recovers_hidden_groups_and_never_lowers_the_likelihood(world, seed):
    """Must-hold: 200 annotators (80/20), 8 pairs each: EM puts ≥ 95% of them in their true group."""
    rows = world.annotated_pairs(200, 8, seed=seed)
    fit = em_mixture(world, rows, n_groups=2, seed=seed)
    accuracy = assignment_accuracy(fit.assignment, true_groups(rows))
    print(f"seed {seed}: EM assignment accuracy {accuracy:.3f}, mixing {np.round(np.sort(fit.mixing), 3)}, "
          f"{len(fit.objective)} iterations")
    assert accuracy >= 0.95
    assert min(fit.mixing) == pytest.approx(0.2, abs=0.07)
    steps = np.diff(fit.objective)
    assert (steps >= -1e-7).all(), steps.min()
    # the monotone quantity is the one mixture_objective computes
    owner = np.array([fit.annotators.index(r["annotator"]) for r in rows])
    assert mixture_objective(fit.thetas, fit.mixing, pair_differences(world, rows), owner, len(fit.annotators),
                             1.0) == pytest.approx(fit.objective[-1], rel=1e-6)


def test_one_group_is_the_single_reward_model(world):
    rows = world.annotated_pairs(40, 4, seed=3)
    one = em_mixture(world, rows, n_groups=1, iterations=3, restarts=1)
    assert np.allclose(one.thetas[0], fit_reward_model(world, rows).theta, atol=1e-6)
    # the pooled RM serves the majority: it ranks a formal answer above a casual one
    rm = fit_reward_model(world, world.annotated_pairs(200, 8, seed=4))
    x = "describe the lake :"
    formal, casual = rm([x, x], ["the lake is tranquil .", "the lake is super fun !"])
    assert formal > casual


def test_maxmin_reward_picks_the_worst_off_group():
    r1 = lambda p, y: [1.0, 2.0, 3.0]
    r2 = lambda p, y: [0.0, 5.0, 0.0]
    assert maxmin_reward([r1, r2], "batch")(["x"] * 3, ["a"] * 3) == [0.0, 5.0, 0.0]  # means 2 and 5/3: group 2
    assert maxmin_reward([r1, r2], "sample")(["x"] * 3, ["a"] * 3) == [0.0, 2.0, 0.0]
    assert maxmin_reward([r1])(["x"] * 3, ["a"] * 3) == [1.0, 2.0, 3.0]  # U = 1: standard RLHF
    with pytest.raises(ValueError, match="mode"):
        maxmin_reward([r1], "mean")
    with pytest.raises(ValueError, match="at least one"):
        maxmin_reward([])


def test_em_and_assignment_validation(world):
    with pytest.raises(ValueError, match="annotator"):
        em_mixture(world, [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(ValueError, match="n_groups"):
        em_mixture(world, world.annotated_pairs(3, 2, seed=0), n_groups=0)
    with pytest.raises(ValueError, match="cannot be split"):
        em_mixture(world, world.annotated_pairs(1, 2, seed=0), n_groups=2)
    with pytest.raises(ValueError, match="l2"):
        fit_bt(np.ones((2, 3)), l2=0.0)
    with pytest.raises(ValueError, match="cover"):
        assignment_accuracy({0: 1}, {0: 1, 1: 0})
    assert assignment_accuracy({0: 1, 1: 0, 2: 0}, {0: 0, 1: 1, 2: 1}) == 1.0  # labels are matched


def test_direction_vectors_are_checked():
    v = check_direction([3.0, 4.0])
    assert v == pytest.approx([0.6, 0.8])
    with pytest.raises(ValueError, match="zero length"):
        check_direction([0.0, 0.0])
    with pytest.raises(ValueError, match="vector of 2 weights"):
        check_direction([1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="finite"):
        check_direction([float("nan"), 1.0])
    attrs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    assert directional_scores(attrs, [1.0, 0.0]).tolist() == [1.0, 0.0, 0.5]  # v = e_i gives attribute i
    assert directional_scores(attrs, [0.0, 2.0]).tolist() == [0.0, 1.0, 0.5]
    with pytest.raises(ValueError, match="vector of 2 weights"):
        directional_scores(attrs, [1.0])
