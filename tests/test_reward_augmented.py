"""Reward-augmented DPO (Zhang et al. 2024, METHODS.md §3.9) on the pocket model's word-level tokenizer.

Chapter 4 conditions on the gold reward binned into four levels named by words of the reviews
world ("awful" < −0.5 ≤ "bad" < 0 ≤ "good" < 0.5 ≤ "excellent"), because numeric goals such as
the authors' "Overall score: 8." are out of the pocket vocabulary and all become <unk>.
"""

from __future__ import annotations

import math

import pytest

from alignlib.losses.pairwise import reward_augmented_relabel

GOAL_LEVELS = ((-0.5, "awful"), (0.0, "bad"), (0.5, "good"), (math.inf, "excellent"))
GOAL = "quality {score} :"


def goal_word(score: float) -> str:
    return next(word for bound, word in GOAL_LEVELS if score < bound)


def test_numeric_goals_collapse_to_unk_on_the_pocket_tokenizer(pocket_reviews):
    """The pitfall the chapter avoids: two different numeric goals give the same ids, all <unk>."""
    _, tokenizer = pocket_reviews
    a, b = (tokenizer(f"Overall score: {s}.")["input_ids"] for s in ("0.73", "-0.5"))
    assert a == b
    assert tokenizer.unk_token_id in a


def test_goal_levels_tokenize_to_distinct_known_ids(pocket_reviews):
    """Each level's goal prefix is in-vocabulary and differs from every other level's."""
    _, tokenizer = pocket_reviews
    ids = {
        word: tuple(tokenizer(GOAL.format(score=word))["input_ids"])
        for _, word in GOAL_LEVELS
    }
    assert len(set(ids.values())) == len(GOAL_LEVELS)
    for word, row in ids.items():
        assert tokenizer.unk_token_id not in row, word
    # the prompt the chapter builds keeps the world's item, so gold judgement is unchanged by the goal
    prompt = GOAL.format(score="excellent") + " review the pizza :"
    assert tokenizer.unk_token_id not in tokenizer(prompt)["input_ids"]


def test_relabel_with_a_score_formatter(reviews_world):
    """score_format maps each copy's score to its goal word; the gold judge still finds the item."""
    rows = [
        {
            "prompt": "review the pizza :",
            "chosen": "it was great .",
            "rejected": "it was bad .",
            "chosen_score": 0.46,
            "rejected_score": -0.32,
        }
    ]
    a, b = reward_augmented_relabel(
        rows, goal_template=GOAL, separator=" ", score_format=goal_word
    )
    assert (
        a["prompt"] == "quality good : review the pizza :"
        and a["chosen"] == "it was great ."
    )
    assert (
        b["prompt"] == "quality bad : review the pizza :"
        and b["chosen"] == "it was bad ."
    )
    assert (a["target_score"], b["target_score"]) == (0.46, -0.32)
    plain = reviews_world.gold_reward(["review the pizza :"], ["it was great ."])
    assert reviews_world.gold_reward([a["prompt"]], [a["chosen"]]) == plain
    # default formatting is unchanged
    assert reward_augmented_relabel(rows)[0]["prompt"].startswith(
        "Overall score: 0.46.\n\n"
    )


def test_formatter_must_return_text():
    rows = [
        {
            "prompt": "p",
            "chosen": "a",
            "rejected": "b",
            "chosen_score": 1.0,
            "rejected_score": 0.0,
        }
    ]
    with pytest.raises(TypeError, match="score_format returned int"):
        reward_augmented_relabel(rows, score_format=lambda s: 3)
