"""DPO's implicit reward as a judge and per token (alignlib.diagnostics; chapter 4, METHODS.md §3.1, §3.16).

Identities of the pure per-token reward, consistency of the model-level helpers with
the sequence log-probs the DPO loss sees, and clear errors on bad input.
"""

from __future__ import annotations

import copy

import pytest
import torch

from alignlib.diagnostics import (ImplicitReward, completion_token_logprobs, mean_credit_by_role, pair_logprobs,
                                  reviews_token_roles, token_credit, token_implicit_rewards)
from alignlib.models import Reference
from alignlib.reward_model import preference_accuracy

ROWS = [
    {"prompt": "review the pizza :", "chosen": "the pizza was great . i would recommend it .",
     "rejected": "it was bad .", "chosen_gold": 0.5, "rejected_gold": -0.3},
    {"prompt": "what did you think of the movie ?", "chosen": "i loved the movie .",
     "rejected": "the story was not good . the staff was dull .", "chosen_gold": 0.6, "rejected_gold": -0.4},
    {"prompt": "write a short review of the lamp .", "chosen": "it was very lovely .",
     "rejected": "i did not like the lamp .", "chosen_gold": 0.4, "rejected_gold": -0.2},
]


@pytest.fixture(scope="module")
def perturbed(pocket_reviews):
    """A copy of the SFT pocket model with slightly perturbed weights: a stand-in for a trained policy."""
    policy, tokenizer = pocket_reviews
    other = copy.deepcopy(policy)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return other


def test_token_rewards_sum_to_sequence_implicit_reward_and_vanish_off_mask():
    g = torch.Generator().manual_seed(1)
    pol, ref = -torch.rand(4, 7, generator=g) * 3, -torch.rand(4, 7, generator=g) * 3
    mask = torch.zeros(4, 7)
    mask[:, 2:5] = 1
    mask[3, 5:] = 1
    r = token_implicit_rewards(pol, ref, mask, beta=0.3)
    assert torch.allclose(r.sum(-1), 0.3 * ((pol - ref) * mask).sum(-1))
    assert (r[mask == 0] == 0).all()
    assert torch.equal(token_implicit_rewards(pol, pol, mask, beta=0.3), torch.zeros(4, 7))
    # linear in β, sign of the log-ratio
    assert torch.allclose(token_implicit_rewards(pol, ref, mask, 0.6), 2 * r)
    assert ((r > 0) == ((pol > ref) & (mask > 0))).all()


@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_token_rewards_refuse_non_positive_beta(beta):
    x = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="beta must be > 0"):
        token_implicit_rewards(x, x, x, beta)


def test_token_rewards_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        token_implicit_rewards(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 3), 0.1)


def test_completion_token_logprobs_sum_to_the_sequence_logprob_the_loss_sees(pocket_reviews):
    policy, tokenizer = pocket_reviews
    prompts = [r["prompt"] for r in ROWS]
    chosen, rejected = pair_logprobs(policy, tokenizer, ROWS)
    per_token = completion_token_logprobs(policy, tokenizer, prompts + prompts,
                                          [r["chosen"] for r in ROWS] + [r["rejected"] for r in ROWS], batch_size=2)
    sums = torch.tensor([lp.sum().item() for _, lp in per_token])
    assert torch.allclose(sums, torch.cat([chosen, rejected]), atol=1e-4)
    for (ids, lp), text in zip(per_token, [r["chosen"] for r in ROWS]):
        assert ids[-1] == tokenizer.eos_token_id and len(ids) == len(lp) == len(text.split()) + 1
        assert (lp < 0).all()


def test_implicit_reward_is_beta_times_the_log_ratio(pocket_reviews, perturbed):
    policy, tokenizer = pocket_reviews
    judge = ImplicitReward(perturbed, policy, tokenizer, beta=0.1)
    prompts = [r["prompt"] for r in ROWS]
    got = judge.scores(prompts, [r["chosen"] for r in ROWS])
    pol_c, _ = pair_logprobs(perturbed, tokenizer, ROWS)
    ref_c, _ = pair_logprobs(policy, tokenizer, ROWS)
    assert torch.allclose(got, 0.1 * (pol_c - ref_c), atol=1e-5)
    assert got.abs().max() > 1e-3  # the perturbation moved something
    # a Reference object (what train() returns) works the same; an identical copy scores 0 everywhere
    assert torch.allclose(ImplicitReward(perturbed, Reference(policy), tokenizer, 0.1).scores(
        prompts, [r["rejected"] for r in ROWS]), judge.scores(prompts, [r["rejected"] for r in ROWS]))
    same = ImplicitReward(copy.deepcopy(policy), policy, tokenizer, 0.1)
    assert same(prompts, [r["chosen"] for r in ROWS]) == pytest.approx([0.0] * 3, abs=1e-6)
    # usable wherever a reward model is: the order of a pair decides accuracy
    acc = preference_accuracy(judge, ROWS, against="gold")
    assert acc == pytest.approx(((got > judge.scores(prompts, [r["rejected"] for r in ROWS])).float().mean().item()))


def test_token_credit_sums_to_the_implicit_reward_and_names_the_tokens(pocket_reviews, perturbed):
    policy, tokenizer = pocket_reviews
    prompts, texts = [r["prompt"] for r in ROWS], [r["chosen"] for r in ROWS]
    credit = token_credit(perturbed, policy, tokenizer, prompts, texts, beta=0.1)
    total = ImplicitReward(perturbed, policy, tokenizer, beta=0.1).scores(prompts, texts)
    for (tokens, rewards), text, t in zip(credit, texts, total):
        assert tokens[:-1] == text.split() and tokens[-1] == tokenizer.eos_token
        assert rewards.sum().item() == pytest.approx(t.item(), abs=1e-5)


def test_implicit_reward_refuses_a_reference_that_is_the_policy(pocket_reviews):
    policy, tokenizer = pocket_reviews
    with pytest.raises(ValueError, match="reference is the policy itself"):
        ImplicitReward(policy, policy, tokenizer, 0.1)
    with pytest.raises(ValueError, match="adapters off"):
        token_credit(policy, Reference(None), tokenizer, ["review the pizza :"], ["it was good ."], 0.1)
    with pytest.raises(ValueError, match="beta"):
        ImplicitReward(copy.deepcopy(policy), policy, tokenizer, 0.0)
    with pytest.raises(ValueError, match="one prompt per response"):
        completion_token_logprobs(policy, tokenizer, ["review the pizza :"], ["a .", "b ."])


def test_reviews_token_roles_follow_the_gold_grammar():
    tokens = "the pizza was not very good . i hated the movie . it was not awful . i would recommend it . <eos>".split()
    roles = reviews_token_roles("review the pizza :", tokens)
    assert dict(zip(range(len(tokens)), roles))[1] == "prompt's item"
    got = {t: r for t, r in zip(tokens, roles) if t in ("good", "hated", "movie", "awful", "recommend", "not", "<eos>")}
    assert got == {"good": "negated positive word", "hated": "negative word", "movie": "other item",
                   "awful": "negated negative word", "recommend": "positive word", "not": "not", "<eos>": "end"}
    assert roles[0] == "other" and len(roles) == len(tokens)


def test_mean_credit_by_role_averages_per_role():
    credit = [(["it", "was", "good", "."], torch.tensor([0.0, 0.0, 0.4, 0.1])),
              (["it", "was", "bad", "."], torch.tensor([0.0, 0.2, -0.6, 0.1]))]
    out = mean_credit_by_role(["review the pizza :"] * 2, credit)
    assert out["positive word"] == (pytest.approx(0.4), 1) and out["negative word"] == (pytest.approx(-0.6), 1)
    assert out["other"] == (pytest.approx(0.4 / 6), 6)
    with pytest.raises(ValueError, match="one prompt per answer"):
        mean_credit_by_role(["review the pizza :"], credit)
