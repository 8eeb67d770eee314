"""PPO's optional parts: PPO-max score normalisation/clipping, policy filtration (PF-PPO), dense token rewards (RTO)
and macro actions (MA-RLHF)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from alignlib.config import TrainConfig
from alignlib.loop import train
from alignlib.losses.group import pf_filter
from alignlib.losses.ppo import gae, macro_gae
from alignlib.models import Reference
from alignlib.ppo import DenseDPOReward, PolicyWithCritic, PPORollouts


def _config(tmp_path, name="ppo", **kw):
    base = dict(method="ppo", output_dir=str(tmp_path / name), max_steps=4, learning_rate=3e-4,
                per_device_train_batch_size=4, num_mini_batches=2, ppo_epochs=2, beta=0.05, max_new_tokens=12,
                save_steps=0, progress=False, logging_steps=0)
    base.update(kw)
    return TrainConfig(**base)


def _source(model, tok, world, reward_fn, **kw):
    cfg = TrainConfig(method="ppo", max_new_tokens=12, per_device_train_batch_size=8, **{"beta": 0.05, **kw})
    wrapped = PolicyWithCritic(model, cfg.beta)
    return PPORollouts(lambda: wrapped, tok, world.prompts("train"), reward_fn=reward_fn,
                       reference=Reference(model), config=cfg, per_device=8, accumulation=1, world_size=1, seed=0,
                       max_new_tokens=12)


# ----------------------------------------------------------------------------- macro actions
def test_macro_gae_is_gae_at_size_one_and_gae_over_chunks_otherwise():
    gen = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(4, 9, generator=gen), torch.randn(4, 9, generator=gen)
    mask = torch.ones(4, 9)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    mask[3, 1:] = 0
    for g, lam in ((1.0, 0.95), (0.9, 0.5)):
        a, r = macro_gae(rewards, values, mask, 1, g, lam)
        b, s = gae(rewards, values, mask, g, lam)
        assert torch.equal(a, b) and torch.equal(r, s)
    # n = 3, γ = λ = 1: a token's advantage is the reward-to-go from its chunk's start minus that start's value
    adv, ret = macro_gae(rewards, values, mask, 3, 1.0, 1.0)
    to_go = (rewards * mask).flip(-1).cumsum(-1).flip(-1)
    for t in range(9):
        start = t - t % 3
        expected = (to_go[:, start] - values[:, start]) * mask[:, t]
        torch.testing.assert_close(adv[:, t], expected)
        torch.testing.assert_close(ret[:, t], (to_go[:, start]) * mask[:, t])
    # the chunk's advantage is shared by its tokens, and padding stays 0
    assert torch.equal(adv[0, 0:3], adv[0, 0].expand(3)) and (adv[mask == 0] == 0).all()
    with pytest.raises(ValueError, match="size"):
        macro_gae(rewards, values, mask, 0)


def test_macro_actions_train_through_the_loop(tmp_path):
    h = train(_config(tmp_path, macro_action_size=4)).history
    assert len(h) == 4 and h[0]["ratio"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="macro_action_size must be ≥ 1"):
        _config(tmp_path, macro_action_size=0)


# ----------------------------------------------------------------------------- PPO-max score normalisation
def test_score_normalisation_and_clipping_use_running_statistics(pocket_reviews, reviews_world, tmp_path):
    model, tok = pocket_reviews
    reward = lambda p, r: [100.0 + 50.0 * len(x) for x in r]  # a badly scaled reward  # noqa: E731
    wrapped = PolicyWithCritic(model, 0.0)
    cfg = TrainConfig(method="ppo", beta=0.0, max_new_tokens=12, per_device_train_batch_size=8, score_norm=True,
                      score_clip=1.5, whiten_advantages=False, lam=1.0)
    src = PPORollouts(lambda: wrapped, tok, reviews_world.prompts("train"), reward_fn=reward,
                      reference=Reference(model), config=cfg, per_device=8, accumulation=1, world_size=1, seed=0,
                      max_new_tokens=12)
    rolls = [src.rollout(i, 0) for i in range(2)]
    assert wrapped.score_stats[0].item() == 16  # the running statistics are a buffer: 2 rollouts × 8 scores
    assert all(r.metrics["score"] > 100 for r in rolls)  # the metric reports the raw score
    for r in rolls:  # β = 0, V = 0, γ = λ = 1: the first token's return is the normalised, clipped score
        ret = r.tensors["returns"][:, 0]
        assert ret.abs().max().item() <= 1.5 + 1e-5 and ret.std().item() > 0.1
    # the first rollout is normalised by its own mean: its returns are centred
    assert abs(rolls[0].tensors["returns"][:, 0].mean().item()) < 0.5
    with pytest.raises(ValueError, match="score_clip must be > 0"):
        _config(tmp_path, score_clip=0.0)


def test_score_normalisation_resumes_exactly(tmp_path, interrupt_and_resume):
    cfg = _config(tmp_path, "full", max_steps=6, save_steps=2, num_mini_batches=1, score_norm=True, score_clip=2.0)
    reference = train(cfg)
    resumed = interrupt_and_resume(dataclasses.replace(cfg, output_dir=str(tmp_path / "interrupted")), "ppo", 5)
    worst = max(abs(a[k] - b[k]) for a, b in zip(resumed.history, reference.history) for k in a)
    assert len(resumed.history) == 6 and worst <= 1e-6


# ----------------------------------------------------------------------------- policy filtration
@pytest.mark.parametrize("strategy, kept", [("best_of_n", 1), ("best_worst", 2), ("best_random", 2)])
def test_pf_ppo_rollout_keeps_the_filtered_samples(pocket_reviews, reviews_world, strategy, kept):
    model, tok = pocket_reviews
    calls = []

    def reward(prompts, responses):
        calls.append((list(prompts), list(responses)))
        return reviews_world.gold_reward(prompts, responses)

    src = _source(model, tok, reviews_world, reward, pf_strategy=strategy, samples_per_prompt=4)
    roll = src.rollout(0, 0)
    (prompts, responses), = calls
    assert len(prompts) == 8 // kept * 4  # 8 rows from 8/kept prompts × 4 samples
    assert roll.tensors["action_mask"].shape[0] == 8
    scores = torch.tensor(reviews_world.gold_reward(prompts, responses))
    keep = pf_filter(scores, 4, strategy, generator=torch.Generator().manual_seed(0))  # shape only (random differs)
    assert keep.numel() == 8
    best = scores.view(-1, 4).max(1).values
    if strategy == "best_of_n":
        assert roll.metrics["score"] == pytest.approx(best.mean().item(), rel=1e-5)
    if strategy == "best_worst":
        worst = scores.view(-1, 4).min(1).values
        assert roll.metrics["score"] == pytest.approx(((best + worst) / 2).mean().item(), rel=1e-5)
    assert roll.metrics["score_sampled"] == pytest.approx(scores.mean().item(), rel=1e-5)
    assert roll.metrics["score"] >= roll.metrics["score_sampled"]


def test_pf_ppo_config_is_checked_and_trains(tmp_path):
    with pytest.raises(ValueError, match="pf_strategy must be"):
        _config(tmp_path, pf_strategy="best")
    with pytest.raises(ValueError, match="samples_per_prompt .2. must be > 2"):
        _config(tmp_path, pf_strategy="best_worst", samples_per_prompt=2)
    h = train(_config(tmp_path, pf_strategy="best_random", samples_per_prompt=4)).history
    assert len(h) == 4 and h[0]["score"] >= h[0]["score_sampled"] - 1e-6


# ----------------------------------------------------------------------------- dense token rewards
def test_dense_dpo_reward_is_the_token_log_ratio_and_its_sparse_twin_has_the_same_sum(pocket_reviews, reviews_world):
    import copy

    model, tok = pocket_reviews
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() * 0.8)
    src = _source(model, tok, reviews_world, lambda p, r: [0.0] * len(p))
    rows = {k: src.rollout(0, 0).tensors[k] for k in ("input_ids", "attention_mask", "position_ids", "action_mask")}
    mask = rows["action_mask"]
    same = DenseDPOReward(model, model, beta=0.1).token_rewards(rows)
    assert same.abs().max().item() < 1e-5  # π_dpo = π_ref: no reward anywhere
    dense = DenseDPOReward(other, model, beta=0.1).token_rewards(rows)
    sparse = DenseDPOReward(other, model, beta=0.1, dense=False).token_rewards(rows)
    torch.testing.assert_close(dense.sum(-1), sparse.sum(-1), rtol=1e-5, atol=1e-5)
    assert ((sparse != 0).sum(-1) <= 1).all() and (dense * (1 - mask) == 0).all()
    assert (dense != 0).sum() > mask.shape[0]  # spread over tokens
    assert DenseDPOReward(other, model, 0.1)(["a", "b"], ["x", "y"]) == [0.0, 0.0]
    assert DenseDPOReward(other, model, 0.1, score_fn=lambda p, r: [1.0, 2.0], score_coef=0.5)(["a", "b"], ["x", "y"]) \
        == [0.5, 1.0]
    with pytest.raises(ValueError, match="beta"):
        DenseDPOReward(other, model, 0.0)


def test_a_reward_with_token_rewards_enters_the_rollout_and_bad_shapes_are_refused(pocket_reviews, reviews_world):
    model, tok = pocket_reviews

    class Bonus:
        def __init__(self, shape_ok=True):
            self.shape_ok = shape_ok

        def __call__(self, prompts, responses):
            return [0.0] * len(prompts)

        def token_rewards(self, rows):
            m = rows["action_mask"]
            return torch.ones_like(m) if self.shape_ok else torch.ones(m.shape[0], m.shape[1] + 1)

    plain = _source(model, tok, reviews_world, lambda p, r: [0.0] * len(p), whiten_advantages=False, beta=0.0)
    bonus = _source(model, tok, reviews_world, Bonus(), whiten_advantages=False, beta=0.0)
    a, b = plain.rollout(0, 0).tensors, bonus.rollout(0, 0).tensors
    assert torch.equal(a["input_ids"], b["input_ids"])
    # V = 0, γ = λ = 1 ... here λ = 0.95 and V = 0: the returns of the first token grow by the number of later tokens
    assert (b["returns"][:, 0] > a["returns"][:, 0] + 0.5).all()
    with pytest.raises(ValueError, match="token_rewards must return"):
        _source(model, tok, reviews_world, Bonus(shape_ok=False)).rollout(0, 0)


# ----------------------------------------------------------------------------- LoRA
def test_ppo_with_lora_trains_adapters_of_policy_and_critic_and_resumes_exactly(tmp_path, monkeypatch, pocket_reviews,
                                                                                interrupt_and_resume):
    """--lora: the policy and the critic (a copy of the LoRA backbone) train adapters over frozen base weights;
    the reference is the policy with its adapters off (first rollout KL 0); an interrupted run resumes exactly."""
    from alignlib import methods
    from alignlib.ppo import PolicyWithCritic as Wrapper

    base, _ = pocket_reviews
    cfg = _config(tmp_path, "lora", max_steps=8, save_steps=4, learning_rate=1e-3, lora=True)
    wrapped = []
    original = methods.METHODS["ppo"]

    def wrap(model, config):
        wrapped.append(Wrapper(model, config.beta))
        return wrapped[-1]

    with monkeypatch.context() as m:
        m.setitem(methods.METHODS, "ppo", dataclasses.replace(original, wrap_model=wrap))
        result = train(cfg)
    h = result.history
    assert h[0]["ratio"] == pytest.approx(1.0, abs=1e-5) and h[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert h[4]["value_mean"] != 0.0  # the critic learned
    module = wrapped[0]
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert any(n.startswith("critic.") and "lora_" in n for n in trainable)  # the critic's own adapters ...
    assert not any(n.startswith("critic.") and "lora_" not in n for n in trainable)  # ... over frozen base weights
    assert {"value_head.weight", "value_head.bias"} <= trainable
    assert not any(n.startswith("policy.") and "lora_" not in n for n in trainable)
    # the frozen base weights of policy and critic are still the SFT model's
    sft = dict(base.named_parameters())
    for name, p in module.critic.named_parameters():
        if "lora_" not in name:
            key = "model." + name.replace(".base_layer", "")
            assert torch.equal(p.detach().cpu(), sft[key].detach().cpu()), name
    assert (tmp_path / "lora" / "final" / "adapter_config.json").exists()
    # exact resume from the checkpoint at step 4
    resumed = interrupt_and_resume(dataclasses.replace(cfg, output_dir=str(tmp_path / "lora2")), "ppo", 6)
    worst = max(abs(a[k] - b[k]) for a, b in zip(resumed.history, h) for k in a)
    assert len(resumed.history) == 8 and worst <= 1e-6
