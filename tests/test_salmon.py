"""Principle-following reward models (SALMON; alignlib.principles, chapter 2 sec-ch2-salmon).

* the principle judges read the world's gold components, and rows follow the principle shown:
  flipping "good" <-> "bad" flips every label, and the prompt carries the principle;
* bad input (unknown principle, unknown words, malformed rows) gets a clear error;
* the headline, on the judges' verdicts, for two seeds: one reward model trained on
  principle-labelled rows ranks held-out pairs by the principle it is given (well above the
  50% average that any principle-blind scorer is held to on pairs judged both ways, as the
  control of chapter 2 is), and flipping the principle flips most of its preferences.
"""

from __future__ import annotations

import copy
import statistics

import pytest
import torch

from alignlib.config import TrainConfig
from alignlib.loop import train
from alignlib.principles import (
    PRINCIPLES,
    get_principle,
    judge,
    principle_pairs,
    principle_prefix,
    principle_prompt,
    principled_reward,
    without_principles,
)
from alignlib.reward_model import RewardModel, preference_accuracy
from alignlib.rollout import preference_pairs, prompts_for

PAIRS = [
    {"prompt": "review the pizza :", "chosen": "the pizza was great . i loved the pizza .",
     "rejected": "it was awful ."},
    {"prompt": "review the lamp :", "chosen": "it was dull .", "rejected": "the lamp was not bad ."},
    {"prompt": "review the tea :", "chosen": "it was good .", "rejected": "it was good . i liked the tea ."},
]


def test_judges_read_the_world(reviews_world):
    w = reviews_world
    prompts = [p["prompt"] for p in PAIRS]
    answers = [p["chosen"] for p in PAIRS]
    sentiment = [w.score(p, a)["sentiment"] for p, a in zip(prompts, answers)]
    assert judge(w, "good", prompts, answers) == sentiment
    assert judge(w, "bad", prompts, answers) == [-s for s in sentiment]
    assert judge(w, "short", prompts, answers) == [-float(len(a.split())) for a in answers]


def test_rows_follow_the_principle_and_flip(reviews_world):
    good = principle_pairs(reviews_world, PAIRS, ["good"])
    bad = principle_pairs(reviews_world, PAIRS, ["bad"])
    assert len(good) == len(bad) == 3
    for g, b in zip(good, bad):
        assert g["prompt"] == "good : " + g["question"] and b["prompt"] == "bad : " + b["question"]
        assert (g["chosen"], g["rejected"]) == (b["rejected"], b["chosen"])  # flipping the principle flips the label
        assert g["chosen_judge"] > g["rejected_judge"]
        assert reviews_world.score(g["question"], g["chosen"])["sentiment"] > \
            reviews_world.score(g["question"], g["rejected"])["sentiment"]
        assert g["chosen_gold"] == reviews_world.gold_reward([g["question"]], [g["chosen"]])[0]
    assert good[0]["chosen"] == PAIRS[0]["chosen"] and good[1]["chosen"] == PAIRS[1]["rejected"]
    short = principle_pairs(reviews_world, PAIRS, ["short"])
    assert all(len(r["chosen"].split()) < len(r["rejected"].split()) for r in short)
    # "cycle" judges each pair once, balanced over the principles; "all" judges every pair by every one
    cycled = principle_pairs(reviews_world, PAIRS, ["good", "bad", "short"], seed=3)
    assert sorted(r["principle"] for r in cycled) == ["bad", "good", "short"]
    assert len(principle_pairs(reviews_world, PAIRS, ["good", "short"], assign="all")) == 6
    # the control sees the same pairs and labels with the principle removed
    control = without_principles(cycled)
    assert [r["prompt"] for r in control] == [r["question"] for r in cycled]
    assert [(r["chosen"], r["rejected"]) for r in control] == [(r["chosen"], r["rejected"]) for r in cycled]


def test_judge_ties_are_dropped(reviews_world):
    tie = [{"prompt": "review the car :", "chosen": "it was good .", "rejected": "it was fun ."}]
    assert principle_pairs(reviews_world, tie, ["good"]) == []
    assert len(principle_pairs(reviews_world, tie, ["short"])) == 0  # same length too


def test_prefixes_and_reward_wrapper(pocket_reviews):
    _, tok = pocket_reviews
    assert principle_prefix("good") == "good :"
    assert principle_prefix(["good", "short"]) == "good : short :"
    assert principle_prompt("bad", "review the tea :") == "bad : review the tea :"
    seen = {}

    class Recorder:
        tokenizer = tok

        def __call__(self, prompts, responses):
            seen["prompts"] = list(prompts)
            return [float(len(r)) for r in responses]

    fn = principled_reward(Recorder(), ["good", "short"])
    assert fn(["review the tea :"], ["it was good ."]) == [13.0]
    assert seen["prompts"] == ["good : short : review the tea :"]
    # every principle is written in words the pocket tokenizer knows
    for name in PRINCIPLES:
        assert tok.unk_token_id not in tok(principle_prefix(name))["input_ids"]


def test_bad_input_errors(reviews_world, pocket_reviews, monkeypatch):
    _, tok = pocket_reviews
    with pytest.raises(ValueError, match="unknown principle 'kind'"):
        get_principle("kind")
    with pytest.raises(ValueError, match="unknown principle"):
        principle_pairs(reviews_world, PAIRS, ["good", "kind"])
    with pytest.raises(ValueError, match="assign must be"):
        principle_pairs(reviews_world, PAIRS, ["good"], assign="some")
    with pytest.raises(ValueError, match="lacks"):
        principle_pairs(reviews_world, [{"prompt": "review the tea :", "chosen": "it was good ."}], ["good"])
    with pytest.raises(ValueError, match="at least one principle"):
        principle_prefix([])
    with pytest.raises(ValueError, match="repeat"):
        principle_prefix(["good", "good"])
    with pytest.raises(ValueError, match="made by principle_pairs"):
        without_principles(PAIRS)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        judge(reviews_world, "good", ["a", "b"], ["c"])

    class Model:
        tokenizer = tok

        def __call__(self, prompts, responses):
            return [0.0] * len(prompts)

    with pytest.raises(ValueError, match="unknown principle"):
        principled_reward(Model(), "kind")
    # a principle written in words outside the vocabulary would reach the model as <unk>
    from alignlib import principles

    monkeypatch.setitem(principles.PRINCIPLES, "concise", principles.Principle("concise", "concise :", "", lambda w, p, r: 0))
    with pytest.raises(ValueError, match=r"does not know the word\(s\) \['concise'\]"):
        principled_reward(Model(), "concise")


# ---------------------------------------------------------------- the headline, on the judges' verdicts
WARM_STEPS, STEPS, NUM_PAIRS, BATCH = 150, 150, 1024, 32


def _config(tmp_path, name, steps, seed):
    return TrainConfig(method="reward", output_dir=str(tmp_path / name), max_steps=steps, learning_rate=1e-3,
                       per_device_train_batch_size=BATCH, seed=seed, save_steps=0, progress=False, logging_steps=0)


@pytest.fixture(scope="module")
def warm_reward_model(tmp_path_factory, pocket_reviews, reviews_world):
    """The starting point of every principle-trained model: a reward model that already reads reviews
    (gold-oracle pairs, no principle), as SALMON starts from a language model that can read its principles."""
    policy, tok = pocket_reviews
    pairs = preference_pairs(policy, tok, reviews_world, prompts_for(reviews_world, NUM_PAIRS), seed=100)
    return train(_config(tmp_path_factory.mktemp("warm"), "warm", WARM_STEPS, 100), dataset=pairs).model


def _train_from(warm, tmp_path, name, seed, rows, tok):
    result = train(_config(tmp_path, name, STEPS, seed), model=copy.deepcopy(warm), tokenizer=tok, dataset=rows)
    return RewardModel(result.model, tok)


def _held_out(policy, tok, world, seed):
    """Held-out SFT pairs on the eval prompts, each judged under "good" and under "bad" (the same pairs)."""
    pairs = preference_pairs(policy, tok, world, world.prompts("eval") * 8, seed=seed + 99)
    rows = principle_pairs(world, pairs, ["good", "bad"], assign="all")
    return pairs, {n: [r for r in rows if r["principle"] == n] for n in ("good", "bad")}


@pytest.mark.parametrize("seed", [0, 1])
def test_conditioned_reward_follows_the_principle_given(tmp_path, pocket_reviews, reviews_world, warm_reward_model,
                                                        seed):
    policy, tok = pocket_reviews
    world = reviews_world
    pairs = preference_pairs(policy, tok, world, prompts_for(world, NUM_PAIRS), seed=seed)
    conditioned = _train_from(warm_reward_model, tmp_path, "cond", seed,
                              principle_pairs(world, pairs, ["good", "bad"], assign="all"), tok)
    held_out, rows = _held_out(policy, tok, world, seed)
    acc = {n: preference_accuracy(conditioned, rows[n]) for n in rows}
    # flipping the principle flips the model's preference on most held-out pairs
    prompts = [r["prompt"] for r in held_out]
    a, b = [r["chosen"] for r in held_out], [r["rejected"] for r in held_out]
    gaps = {n: torch.tensor(principled_reward(conditioned, n)(prompts, a))
            - torch.tensor(principled_reward(conditioned, n)(prompts, b)) for n in ("good", "bad")}
    flipped = ((gaps["good"] * gaps["bad"]) < 0).float().mean().item()
    blind = {n: preference_accuracy(conditioned, without_principles(rows[n])) for n in rows}
    print(f"seed {seed}: accuracy vs each principle's judge {acc}; preference flipped on {flipped:.2f} "
          f"of {len(held_out)} pairs; the same model with no principle written {blind}")
    # A principle-blind scorer (the control of chapter 2, or this model given no principle) sees the same pairs
    # labelled both ways, so its two accuracies add up to 1: its average is 0.5 by construction.
    assert statistics.fmean(blind.values()) == pytest.approx(0.5, abs=1e-9)
    # With about 150 judged pairs per principle the standard error of an accuracy is about 0.04.
    assert len(rows["good"]) > 100
    assert statistics.fmean(acc.values()) > 0.6, acc  # serves both principles: 0.5 is the best any blind model does
    assert min(acc.values()) > 0.55, acc
    assert flipped > 0.5, flipped  # the principle, not the pair, decides the winner on most pairs
