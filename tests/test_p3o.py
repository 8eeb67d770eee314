"""P3O in the one loop (`--method p3o`, alignlib.p3o): pairs, on-policy first minibatch, shift invariance, resume."""

from __future__ import annotations

import dataclasses
import math

import pytest

from alignlib.config import TrainConfig
from alignlib.loop import train
from alignlib.p3o import check_p3o_config


def _config(tmp_path, name="p3o", **kw):
    base = dict(method="p3o", output_dir=str(tmp_path / name), max_steps=8, learning_rate=3e-4,
                per_device_train_batch_size=4, gradient_accumulation_steps=2, num_mini_batches=2, ppo_epochs=2,
                beta=0.05, max_new_tokens=16, save_steps=0, progress=False, logging_steps=0)
    base.update(kw)
    return TrainConfig(**base)


def _gold(world, calls=None):
    def reward(prompts, texts):
        if calls is not None:
            calls.append(list(prompts))
        return world.gold_reward(prompts, texts)
    return reward


def _shift(prompt: str) -> float:
    """c(x): a constant per prompt, in [−1.5, 1.5] (the gold reward's own spread is about ±1)."""
    return 0.5 * (sum(map(ord, prompt)) % 7 - 3)


def test_p3o_runs_on_pairs_and_the_first_minibatch_of_each_rollout_is_on_policy(tmp_path, reviews_world):
    calls = []
    result = train(_config(tmp_path), reward_fn=_gold(reviews_world, calls))
    h = result.history
    assert len(h) == 8 and all(math.isfinite(v) for r in h for v in r.values())
    # two rollouts (8 steps / (2 epochs × 2 minibatches)), each of 4 × 2 × 2 = 16 completions = 8 prompts × 2
    assert len(calls) == 2 and all(len(c) == 16 and c[0::2] == c[1::2] for c in calls)
    for i in (0, 4):
        assert h[i]["ratio"] == pytest.approx(1.0, abs=1e-5) and h[i]["clipfrac"] == 0.0, h[i]
        assert h[i]["loss"] == pytest.approx(0.0, abs=1e-6)  # at q = 1 the clipped terms cancel (not the gradient)
        assert len({(r["score"], r["kl"]) for r in h[i:i + 4]}) == 1  # one rollout shared by its 4 steps
        assert max(abs(r["ratio"] - 1.0) for r in h[i + 1:i + 4]) > 1e-4  # the policy did move within the rollout
    assert h[0]["kl"] == pytest.approx(0.0, abs=1e-5) and h[4]["kl"] > 1e-4  # π_ref samples the first rollout
    assert (result.output_dir / "final" / "config.json").exists()
    assert not (result.output_dir / "final" / "critic").exists()  # no critic


def test_a_per_prompt_reward_shift_leaves_the_p3o_trajectory_unchanged_but_not_ppo(tmp_path, reviews_world):
    """The strong form of the paper's reward equivalence: the whole run, sampling included, through `train`."""
    gold = _gold(reviews_world)

    def shifted(prompts, texts):
        return [g + _shift(p) for p, g in zip(prompts, gold(prompts, texts))]

    assert len({_shift(p) for p in reviews_world.prompts("train")}) > 3  # the shift really depends on the prompt
    small = dict(max_steps=4, per_device_train_batch_size=4, gradient_accumulation_steps=1, num_mini_batches=2,
                 ppo_epochs=1)  # 2 rollouts of 2 steps: the second is sampled by the updated policy
    diffs = {}
    for method in ("p3o", "ppo"):
        runs = [train(_config(tmp_path, f"{method}-{tag}", method=method, **small), reward_fn=fn)
                for tag, fn in (("gold", gold), ("shifted", shifted))]
        losses = max(abs(a["loss"] - b["loss"]) for a, b in zip(runs[0].history, runs[1].history))
        weights = max((p - q).abs().max().item() for p, q in zip(runs[0].model.parameters(),
                                                                 runs[1].model.parameters()))
        diffs[method] = (losses, weights)
        if method == "p3o":  # the same pairs were sampled in the second rollout too
            assert runs[0].history[-1]["kl"] == pytest.approx(runs[1].history[-1]["kl"], abs=1e-6)
    print(f"reward shift c(x): max |Δloss|, max |Δweight| — P3O {diffs['p3o']}, PPO {diffs['ppo']}")
    assert diffs["p3o"][0] <= 1e-5 and diffs["p3o"][1] <= 1e-5  # equal up to float rounding
    assert diffs["ppo"][1] > 1e-4 and diffs["ppo"][1] > 1000 * max(diffs["p3o"][1], 1e-9)


def test_p3o_resumes_exactly(tmp_path, interrupt_and_resume, reviews_world):
    """Interrupted in the 2nd rollout (checkpoint at step 2), P3O resumes and ends where the uninterrupted run ends."""
    cfg = _config(tmp_path, "full", max_steps=4, save_steps=2, num_mini_batches=1, gradient_accumulation_steps=1)
    reference = train(cfg, reward_fn=_gold(reviews_world))
    resumed = interrupt_and_resume(dataclasses.replace(cfg, output_dir=str(tmp_path / "interrupted")), "p3o", 4,
                                   reward_fn=_gold(reviews_world))
    worst = max(abs(a[k] - b[k]) for a, b in zip(resumed.history, reference.history) for k in a)
    weights = max((p - q).abs().max().item() for p, q in zip(resumed.model.parameters(),
                                                             reference.model.parameters()))
    assert len(resumed.history) == 4 and worst <= 1e-6 and weights <= 1e-6, (worst, weights)


@pytest.mark.parametrize("kw, message", [
    (dict(per_device_train_batch_size=3), "per_device_train_batch_size .completions per micro-batch. must be even"),
    (dict(save_steps=5), "save_steps .5. must be a multiple of ppo_epochs × num_mini_batches .4."),
    (dict(max_steps=6), "max_steps .6. must be a multiple"),
    (dict(temperature=0.7), "samples at temperature 1"),
    (dict(pf_strategy="best_worst", samples_per_prompt=4), "pf_strategy belong to --method ppo"),
    (dict(kl_target=0.1, score_norm=True), "score_norm, kl_target belong to --method ppo"),
])
def test_bad_p3o_config_is_refused(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        check_p3o_config(_config(tmp_path, **kw))


def test_bad_p3o_config_is_refused_by_train_before_any_step(tmp_path):
    with pytest.raises(ValueError, match="must be even"):
        train(_config(tmp_path, per_device_train_batch_size=3))


def test_p3o_trains_under_ddp(tmp_path):
    """Two gloo processes (accelerate launch): pairs stay on one rank, the first minibatch is on-policy on both."""
    from test_train_invariants import launch_ddp

    out = tmp_path / "ddp"
    flags = ["--method", "p3o", "--world", "reviews", "--max_steps", "4", "--save_steps", "2",
             "--per_device_train_batch_size", "4", "--num_mini_batches", "1", "--ppo_epochs", "2",
             "--beta", "0.05", "--max_new_tokens", "12", "--learning_rate", "3e-4", "--logging_steps", "0",
             "--no_progress", "--output_dir", str(out)]
    record = launch_ddp(tmp_path / "ddp.json", flags)
    h = record["history"]
    assert record["world_size"] == 2 and len(h) == 4
    assert all(math.isfinite(v) for r in h for v in r.values())
    assert [r["ratio"] for r in h[::2]] == pytest.approx([1.0, 1.0], abs=1e-5)  # each rollout's first minibatch
    assert abs(h[1]["ratio"] - 1.0) > 1e-5  # the second epoch sees a moved policy
    assert (out / "final" / "config.json").exists() and (out / "checkpoint-2").exists()


def test_p3o_with_lora_trains_only_the_adapters_and_resumes_exactly(tmp_path, interrupt_and_resume, reviews_world):
    """--lora: the reference is the base with adapters off; the base weights never move; resume is exact."""
    cfg = _config(tmp_path, "lora", lora=True, max_steps=4, save_steps=2, learning_rate=3e-3, num_mini_batches=1,
                  gradient_accumulation_steps=1)
    result = train(cfg, reward_fn=_gold(reviews_world))
    h = result.history
    assert h[0]["kl"] == pytest.approx(0.0, abs=1e-5) and h[0]["ratio"] == pytest.approx(1.0, abs=1e-5)
    model = result.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable), sorted(trainable)[:5]
    assert (result.output_dir / "final" / "adapter_config.json").exists()
    assert max(abs(r["ratio"] - 1.0) for r in h) > 1e-5 and h[2]["kl"] > 1e-6  # the adapters did move the policy
    resumed = interrupt_and_resume(dataclasses.replace(cfg, output_dir=str(tmp_path / "lora-resume")), "p3o", 4,
                                   reward_fn=_gold(reviews_world))
    worst = max(abs(a[k] - b[k]) for a, b in zip(resumed.history, h) for k in a)
    weights = max((p - q).abs().max().item() for p, q in zip(resumed.model.parameters(), model.parameters()))
    assert len(resumed.history) == 4 and worst <= 1e-6 and weights <= 1e-6, (worst, weights)
