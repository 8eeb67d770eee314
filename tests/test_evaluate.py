"""Evaluation metrics: identities that hold whatever the model."""

from __future__ import annotations

import copy
import math

import torch

from alignlib.evaluate import completion_logprobs, distinct_n, evaluate_policy, mean_ci
from alignlib.rollout import sample


def test_policy_against_itself_has_zero_kl_and_even_odds(pocket_reviews, reviews_world):
    """π = π_ref: every KL term is exactly 0 and the gold judge favours neither side beyond noise."""
    model, tok = pocket_reviews
    ev = evaluate_policy(model, model, tok, reviews_world, samples_per_prompt=8, seed=3)
    assert ev.kl == 0.0 and ev.kl_ci == 0.0
    assert abs(ev.win_rate - 0.5) < 2 * ev.win_rate_ci + 0.02
    assert ev.n == 8 * len(reviews_world.prompts("eval"))
    assert 0.0 < ev.distinct_1 <= 1.0


def test_kl_is_positive_for_a_shifted_policy(pocket_reviews, reviews_world):
    """A perturbed policy has KL(π‖π_ref) > 0 (well beyond its interval) on its own samples."""
    model, tok = pocket_reviews
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted.lm_head.weight.add_(0.05 * torch.randn_like(shifted.lm_head.weight, generator=None))
    ev = evaluate_policy(shifted, model, tok, reviews_world, samples_per_prompt=8, seed=4)
    assert ev.kl > ev.kl_ci > 0


def test_completion_logprobs_match_generation_scores(pocket_reviews, reviews_world):
    """log π(y|x) re-scored from the sampled ids equals the sum of the log-softmax scores seen while sampling."""
    model, tok = pocket_reviews
    prompts = reviews_world.prompts("eval")[:6]
    s = sample(model, tok, prompts, seed=5)
    lp = completion_logprobs(model, s, tok.pad_token_id)
    # independent check: score each sample alone, token by token
    for i, (p, c) in enumerate(zip(s.prompt_ids, s.completion_ids)):
        ids = torch.tensor([p + c])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        total = sum(torch.log_softmax(logits[len(p) - 1 + t], -1)[c[t]].item() for t in range(len(c)))
        assert math.isclose(lp[i].item(), total, abs_tol=1e-4)


def test_mean_ci_and_distinct_n():
    m, ci = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and math.isclose(ci, 1.96 * (5 / 3) ** 0.5 / 2)
    assert distinct_n(["a b a b"], 1) == 0.5
    assert distinct_n(["a b a b"], 2) == 2 / 3
    assert distinct_n([""], 2) == 0.0
