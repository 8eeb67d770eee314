"""The foundation's headline effect: DPO on gold-labelled pairs beats the SFT pocket model.

Pairs are two samples of the SFT pocket model per train prompt, labelled by the
reviews world's gold oracle (Bradley–Terry on gold reward). After DPO, policy
samples on the *eval* prompts are compared with SFT samples by the gold judge.
Asserted over three seeds: mean win rate ≥ 65% and every seed above 50% by more
than its 95% interval. KL(π‖π_ref) and the grammatical rate are printed with
the result, because a win bought with broken text is not a win.
"""

from __future__ import annotations

import statistics

from alignlib.config import TrainConfig
from alignlib.evaluate import evaluate_policy
from alignlib.loop import train

# The recipe the README's CLI example uses; lr and data size chosen on seed 0 (see the closing
# notes of the foundation issue: 2048 pairs / 4.7 epochs over-fit and lost fluency).
RECIPE = dict(method="dpo", world="reviews", model="pocket", learning_rate=1e-4, max_steps=300,
              per_device_train_batch_size=32, num_examples=4096, beta=0.1)


def test_dpo_beats_sft_on_gold_win_rate(tmp_path, reviews_world):
    results = []
    for seed in (0, 1, 2):
        cfg = TrainConfig(**RECIPE, seed=seed, output_dir=str(tmp_path / f"dpo-{seed}"), save_steps=0,
                          progress=False, logging_steps=0)
        run = train(cfg)
        ev = evaluate_policy(run.model, run.reference, run.tokenizer, reviews_world, samples_per_prompt=16,
                             seed=100 + seed)
        results.append(ev)
        print(f"seed {seed}: win_rate {ev.win_rate:.3f} ± {ev.win_rate_ci:.3f}  gold {ev.gold_reward:.3f} "
              f"(SFT {ev.ref_gold_reward:.3f})  kl {ev.kl:.2f} nats  grammatical {ev.grammatical:.3f} "
              f"(SFT {ev.ref_grammatical:.3f})")
    mean_win = statistics.fmean(ev.win_rate for ev in results)
    print(f"mean win rate over 3 seeds: {mean_win:.3f}")
    assert mean_win >= 0.65, [round(ev.win_rate, 3) for ev in results]
    for ev in results:
        assert ev.win_rate - ev.win_rate_ci > 0.5
        assert ev.gold_reward > ev.ref_gold_reward
        assert ev.kl > 0  # it moved away from the reference, and we report by how much
        assert ev.grammatical >= 0.8  # the win is not bought with broken text
