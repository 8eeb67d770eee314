"""Reward-guided decoding (alignlib.decoding): the selection step, partial-text scoring, budget and errors."""

from __future__ import annotations

import pytest
import torch

from alignlib.decoding import complete_sentences, partial_text_reward, reward_guided_decode, select_beams


def test_select_beams_keeps_the_best_per_prompt_and_breaks_ties_by_order():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.5, 2.0, -1.0, 0.5])
    owner = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    assert select_beams(scores, owner, 2) == [1, 2, 4, 6]  # 0.5 twice: the earlier (index 2) wins
    assert select_beams(scores, owner, 10) == [1, 2, 3, 0, 4, 6, 5]  # more beams than candidates: all, sorted


def test_select_beams_refuses_bad_input():
    with pytest.raises(ValueError, match="NaN or inf"):
        select_beams(torch.tensor([0.0, float("nan")]), torch.tensor([0, 0]), 1)
    with pytest.raises(ValueError, match="same length"):
        select_beams(torch.tensor([0.0, 1.0]), torch.tensor([0]), 1)
    with pytest.raises(ValueError, match="beams must be"):
        select_beams(torch.tensor([0.0]), torch.tensor([0]), 0)


def test_complete_sentences_and_partial_reward():
    assert complete_sentences("the food was good . the staff") == "the food was good ."
    assert complete_sentences("the staff was") == ""
    assert complete_sentences("a . b !") == "a . b !"
    seen = []
    reward = partial_text_reward(lambda p, t: seen.extend(t) or [0.0] * len(t))
    reward(["x", "y"], ["one . two", "three"])
    assert seen == ["one .", ""]


def test_decode_counts_its_budget_and_returns_one_completion_per_prompt(pocket_reviews, reviews_world):
    model, tok = pocket_reviews
    prompts = reviews_world.prompts("eval")[:3]
    out = reward_guided_decode(model, tok, prompts, reviews_world.gold_reward, beams=1, expansions=1,
                               chunk_tokens=4, max_new_tokens=12, seed=0)
    assert len(out.texts) == len(prompts) and all(len(c) <= 12 for c in out.completion_ids)
    # one beam, one expansion: nothing is ever discarded, so the cost is exactly the kept tokens
    assert out.sampled_tokens == sum(len(c) for c in out.completion_ids)
    wide = reward_guided_decode(model, tok, prompts, reviews_world.gold_reward, beams=2, expansions=3,
                                chunk_tokens=4, max_new_tokens=12, seed=0)
    assert wide.sampled_tokens <= 2 * 3 * 12 * len(prompts)  # the budget of best-of-6
    again = reward_guided_decode(model, tok, prompts, reviews_world.gold_reward, beams=2, expansions=3,
                                 chunk_tokens=4, max_new_tokens=12, seed=0)
    assert again.texts == wide.texts  # seeded
    assert wide.scores == pytest.approx(reviews_world.gold_reward(prompts, wide.texts))


def test_decode_refuses_a_reward_of_the_wrong_length_and_bad_settings(pocket_reviews, reviews_world):
    model, tok = pocket_reviews
    prompts = reviews_world.prompts("eval")[:2]
    with pytest.raises(ValueError, match="one score per text"):
        reward_guided_decode(model, tok, prompts, lambda p, t: [0.0], max_new_tokens=4, seed=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        reward_guided_decode(model, tok, prompts, lambda p, t: [float("inf")] * len(t), max_new_tokens=4, seed=0)
    with pytest.raises(ValueError, match="chunk_tokens must be"):
        reward_guided_decode(model, tok, prompts, reviews_world.gold_reward, chunk_tokens=0)


def test_roll_in_roll_out_switches_models_at_the_given_token(pocket_reviews, reviews_world):
    from alignlib.decoding import roll_in_roll_out
    from alignlib.rollout import sample

    model, tok = pocket_reviews
    prompts = reviews_world.prompts("eval")[:4]

    class Forbidden(torch.nn.Module):  # a model that must never be asked for a token
        def __init__(self):
            super().__init__()

        def parameters(self, recurse=True):
            return model.parameters(recurse)

        def generate(self, **kwargs):
            raise AssertionError("a model was asked for tokens outside its part of the completion")

    only_guide = roll_in_roll_out(model, Forbidden(), tok, prompts, switch_at=12, max_new_tokens=12, seed=0)
    plain = sample(model, tok, prompts, max_new_tokens=12, seed=0)
    assert only_guide.completion_ids == plain.completion_ids  # the guide alone is plain sampling from it
    only_learner = roll_in_roll_out(Forbidden(), model, tok, prompts, switch_at=0, max_new_tokens=12, seed=0)
    assert only_learner.completion_ids == plain.completion_ids
    mixed = roll_in_roll_out(model, model, tok, prompts, switch_at=4, max_new_tokens=12, seed=0)
    assert all(len(c) <= 12 for c in mixed.completion_ids)
    with pytest.raises(ValueError, match="switch_at"):
        roll_in_roll_out(model, model, tok, prompts, switch_at=-1)
