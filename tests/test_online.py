"""The online mode of the one loop: batches sampled from the current policy, scored or judged, then trained on."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from alignlib.config import TrainConfig
from alignlib.evaluate import evaluate_policy
from alignlib.loop import train
from alignlib.online import OnlineGroups, OnlinePairs, judge_by_oracle, judge_by_reward


def _groups(model, tok, world, **kw):
    args = dict(per_device=3, accumulation=2, world_size=2, seed=5, max_new_tokens=12)
    args.update(kw)
    return OnlineGroups(lambda: model, tok, world.prompts("train"), reward_fn=world.gold_reward,
                        samples_per_prompt=4, **args)


def test_online_groups_are_seeded_scored_and_prompt_major(pocket_reviews, reviews_world):
    model, tok = pocket_reviews
    src = _groups(model, tok, reviews_world)
    a, b = src.micro_batch(3, 1, 0), src.micro_batch(3, 1, 0)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # a micro-batch is a function of (seed, step, micro, rank)
    other = src.micro_batch(3, 1, 1)
    assert not torch.equal(a["input_ids"], other["input_ids"]) or a["input_ids"].shape != other["input_ids"].shape
    assert a["input_ids"].shape[0] == 3 * 4 and a["scores"].shape == (12,)
    # prompt-major: the 4 samples of a prompt are contiguous and share its prompt tokens
    prompts = src.step_prompts(3, 1, 0)
    for i, p in enumerate(prompts):
        n = len(tok(p)["input_ids"])
        block = a["input_ids"][4 * i : 4 * i + 4, :n]
        assert (block == block[0]).all()
    # the scores are the gold reward of the decoded samples
    texts = [tok.decode(row[m.bool()], skip_special_tokens=True).strip()
             for row, m in zip(a["input_ids"], a["completion_mask"])]
    gold = reviews_world.gold_reward([p for p in prompts for _ in range(4)], texts)
    assert a["scores"].tolist() == pytest.approx(gold, abs=1e-6)
    # the loop's global RNG stream is not consumed by sampling
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    src.micro_batch(0, 0, 0)
    assert torch.equal(torch.rand(1), before)


def test_online_pairs_put_the_judged_winner_first(pocket_reviews, reviews_world):
    model, tok = pocket_reviews
    src = OnlinePairs(lambda: model, tok, reviews_world.prompts("train"), per_device=6, accumulation=1,
                      world_size=1, seed=0, max_new_tokens=12, judge=judge_by_reward(reviews_world.gold_reward),
                      reward_fn=reviews_world.gold_reward)
    batch = src.micro_batch(0, 0, 0)
    chosen, rejected = batch["scores"].chunk(2)
    assert (chosen >= rejected).all() and (chosen > rejected).any()
    oracle = judge_by_oracle(reviews_world, label_noise=0.5)
    flips = oracle(["p"] * 2000, ["the food was great ."] * 2000, ["the food was awful ."] * 2000, seed=1)
    assert 0.4 < sum(flips) / 2000 < 0.6  # label noise 0.5 makes the oracle a coin


def test_group_methods_need_groups():
    with pytest.raises(ValueError, match="samples_per_prompt must be ≥ 2"):
        TrainConfig(method="grpo", samples_per_prompt=1)


def _online_config(tmp_path, method, **kw):
    base = dict(method=method, output_dir=str(tmp_path / method), max_steps=40, learning_rate=2e-4,
                per_device_train_batch_size=8, samples_per_prompt=4, beta=0.05, max_new_tokens=24,
                save_steps=0, progress=False, logging_steps=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("method", ["grpo", "rloo", "online_dpo"])
def test_online_methods_raise_gold_reward(tmp_path, reviews_world, method):
    """40 steps of each online method against the gold reward lift the policy's gold reward above π_ref's."""
    result = train(_online_config(tmp_path, method))
    ev = evaluate_policy(result.model, result.reference, result.tokenizer, reviews_world, samples_per_prompt=8,
                         max_new_tokens=24, seed=3)
    print(f"{method}: gold {ev.ref_gold_reward:.3f} → {ev.gold_reward:.3f} ± {ev.gold_reward_ci:.3f}, "
          f"win {ev.win_rate:.3f}, KL {ev.kl:.2f}")
    assert ev.gold_reward - ev.gold_reward_ci > ev.ref_gold_reward
    assert ev.win_rate > 0.5
    assert all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in result.history)


def test_online_run_resumes_exactly(tmp_path, interrupt_and_resume):
    """Interrupted at step 5 of 8 (checkpoint at 4), GRPO resumes and ends where the uninterrupted run ends."""
    cfg = _online_config(tmp_path, "grpo", max_steps=8, save_steps=4, per_device_train_batch_size=4,
                         gradient_accumulation_steps=2)
    reference = train(cfg)
    resumed = interrupt_and_resume(dataclasses.replace(cfg, output_dir=str(tmp_path / "interrupted")), "grpo",
                                   4 * 2 + 1)  # step 5, first micro-batch
    worst = max(abs(a[k] - b[k]) for a, b in zip(resumed.history, reference.history) for k in a)
    weights = max((p - q).abs().max().item() for p, q in zip(resumed.model.parameters(),
                                                             reference.model.parameters()))
    print(f"online resume: history diff {worst:.3g}, weight diff {weights:.3g}")
    assert len(resumed.history) == 8 and worst <= 1e-6 and weights <= 1e-6
