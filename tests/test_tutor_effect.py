"""Headline of the pedagogical-alignment chapter, on gold: preference alignment teaches the chat model to scaffold.

The tutor world's pocket model is SFT'd on chat data where direct answers and worked
solutions dominate (about 90% of its sampled turns leak the answer). IPO on the
synthetic preference pairs of `pedagogical_pairs` (scaffold ≻ answer, the paper's
recipe), run straight from that model through the shared loop, must lower the
answer-leak rate and raise the gold pedagogical reward on the *eval* questions, on two
seeds, by margins far beyond the sampling noise of the evaluation (a few hundredths
at 100 turns), while most turns stay grammatical.
"""

from __future__ import annotations

import copy

import pytest

from alignlib.config import TrainConfig
from alignlib.loop import train
from alignlib.pedagogy import evaluate_tutor, pedagogical_pairs


@pytest.fixture(scope="module")
def tutor():
    from alignlib.pocket import load_pocket
    from alignlib.worlds import get_world

    model, tokenizer = load_pocket("tutor")
    return get_world("tutor"), model, tokenizer


def test_ipo_on_pedagogical_pairs_lowers_leaks_and_raises_gold(tmp_path, tutor):
    world, chat, tokenizer = tutor
    questions = world.prompts("eval")[:50]
    for seed in (0, 1):
        before, _, _ = evaluate_tutor(chat, tokenizer, world, questions, samples_per_prompt=2, seed=100 + seed)
        cfg = TrainConfig(method="dpo", loss_type="ipo", world="tutor", seed=seed, max_steps=30, beta=1.0,
                          learning_rate=1e-4, per_device_train_batch_size=32, max_completion_length=48,
                          output_dir=str(tmp_path / f"ipo-{seed}"), save_steps=0, logging_steps=0, progress=False)
        run = train(cfg, model=copy.deepcopy(chat), tokenizer=tokenizer,
                    dataset=pedagogical_pairs(world, 512, seed=seed))
        after, _, _ = evaluate_tutor(run.model, tokenizer, world, questions, samples_per_prompt=2, seed=100 + seed)
        print(f"seed {seed}: leak {before.leak_rate:.2f} → {after.leak_rate:.2f}, gold {before.gold_reward:+.2f} → "
              f"{after.gold_reward:+.2f}, fluent {before.grammatical:.2f} → {after.grammatical:.2f}")
        assert before.leak_rate > 0.7  # the starting point really is an answering chat model
        assert after.leak_rate < before.leak_rate - 0.3
        assert after.gold_reward > before.gold_reward + 0.4
        assert after.grammatical >= 0.7
