"""The language-feedback chapter's headline on gold: ILF and CUT raise constraint satisfaction over SFT.

Each method spends the same number of gold critiques (one per sampled answer) on
train prompts, starting from the SFT pocket model of the constrained-writing world,
and trains through `alignlib.train` with the chapter's recipe. Scored on the eval
prompts by the gold checker: the mean fraction of constraints met (the gold reward)
and the fraction of answers meeting all three. Asserted over three seeds: every
seed of each method above SFT, and the mean gain larger than twice the spread
(standard deviation) over seeds plus the evaluation's own sampling error.
"""

from __future__ import annotations

import statistics

import pytest

from alignlib.feedback import (
    FeedbackRecipe,
    constraint_satisfaction,
    train_with_feedback,
)

LABELS = 96
SEEDS = (0, 1, 2)
EVAL_SAMPLES = 4  # per eval prompt: 216 answers


@pytest.fixture(scope="module")
def setup():
    from alignlib.pocket import load_pocket
    from alignlib.worlds import get_world

    world = get_world("constrained")
    model, tok = load_pocket("constrained")
    return world, model, tok


@pytest.mark.parametrize("method", ["ilf", "cut"])
def test_feedback_method_beats_sft_on_gold(tmp_path, setup, method):
    world, model, tok = setup
    sft = constraint_satisfaction(model, tok, world, samples_per_prompt=EVAL_SAMPLES, seed=1000)
    gains, rows = [], []
    for seed in SEEDS:
        policy, info = train_with_feedback(method, model, tok, world, LABELS, seed, tmp_path / f"{method}{seed}",
                                           FeedbackRecipe())
        ev = constraint_satisfaction(policy, tok, world, samples_per_prompt=EVAL_SAMPLES, seed=1000)
        gains.append(ev["gold"] - sft["gold"])
        rows.append(ev)
        print(f"{method} seed {seed}: gold {ev['gold']:.3f} (SFT {sft['gold']:.3f}), all constraints {ev['all']:.3f} "
              f"(SFT {sft['all']:.3f}), grammatical {ev['grammatical']:.3f}, {info['rows']} rows")
    # sampling error of one evaluation's mean gold (values in {0, 1/3, 2/3, 1}): sd ≤ 0.5
    eval_se = 0.5 / sft["n"] ** 0.5
    spread = statistics.stdev(gains)
    assert all(g > 0 for g in gains), gains
    assert statistics.fmean(gains) > 2 * (spread + eval_se), (gains, spread, eval_se)
    assert all(ev["grammatical"] >= 0.9 for ev in rows)  # not bought with broken sentences
