"""XPO, SELM, online CoPG and APO in the one loop (alignlib.online_dpo): sources, steps, outer loop."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from alignlib.config import TrainConfig
from alignlib.logprobs import sequence_logprobs
from alignlib.loop import train
from alignlib.losses.pairwise import apo_extrapolate
from alignlib.models import Reference, frozen_copy
from alignlib.online import OnlinePairs, judge_by_oracle, sampling_seed
from alignlib.online_dpo import ExplorationPairs, accelerated_iterate, sample_diversity, xpo_step
from alignlib.methods import StepContext
from alignlib.rollout import sample

COMMON = {"per_device": 4, "accumulation": 1, "world_size": 1, "seed": 3, "max_new_tokens": 16}


@pytest.fixture(scope="module")
def shifted(pocket_reviews):
    """A policy that differs from the SFT model (its output layer perturbed), so π_θ ≠ π_ref."""
    model, _ = pocket_reviews
    other = frozen_copy(model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        other.lm_head.weight.add_(0.5 * torch.randn(other.lm_head.weight.shape, generator=g))
    return other


def _decode(tok, ids, mask):
    return [tok.decode(row[m.bool()], skip_special_tokens=True).strip() for row, m in zip(ids, mask)]


def _source(policy, ref, tok, world, pairs):
    return ExplorationPairs(lambda: policy, tok, world.prompts("train"), judge=judge_by_oracle(world),
                            reward_fn=world.gold_reward, reference=Reference(ref), pairs=pairs, **COMMON)


@pytest.mark.parametrize("pairs", ["reference", "policy"])
def test_reference_samples_come_from_the_reference_and_are_seeded(pocket_reviews, shifted, reviews_world, pairs):
    ref, tok = pocket_reviews
    src = _source(shifted, ref, tok, reviews_world, pairs)
    a, b = src.micro_batch(2, 0, 0), src.micro_batch(2, 0, 0)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # a function of (seed, step, micro, rank)
    prompts = src.step_prompts(2, 0, 0)
    seed = sampling_seed(3, 2, 0, 0) + 2
    from_ref = sample(ref, tok, prompts, max_new_tokens=16, seed=seed).texts
    from_policy = sample(shifted, tok, prompts, max_new_tokens=16, seed=seed).texts
    explore = _decode(tok, a["explore_input_ids"], a["explore_completion_mask"])
    assert explore == from_ref and explore != from_policy  # π_ref's draws, not the policy's
    pair = _decode(tok, a["input_ids"], a["completion_mask"])
    if pairs == "policy":  # exactly online DPO's batch, plus the π_ref rows
        plain = OnlinePairs(lambda: shifted, tok, reviews_world.prompts("train"), judge=judge_by_oracle(reviews_world),
                            reward_fn=reviews_world.gold_reward, **COMMON).micro_batch(2, 0, 0)
        for k in plain:
            assert torch.equal(a[k], plain[k]), k
    else:  # each judged pair is (policy sample, π_ref sample), the winner first
        mine = sample(shifted, tok, prompts, max_new_tokens=16, seed=sampling_seed(3, 2, 0, 0)).texts
        won = a["policy_won"].bool().tolist()
        assert [c for c in pair[:4]] == [m if w else r for m, r, w in zip(mine, from_ref, won)]
        assert [c for c in pair[4:]] == [r if w else m for m, r, w in zip(mine, from_ref, won)]


def _config(tmp_path, method, **kw):
    base = dict(method=method, output_dir=str(tmp_path / method), max_steps=4, learning_rate=2e-4,
                per_device_train_batch_size=4, beta=0.1, max_new_tokens=16, save_steps=2, progress=False,
                logging_steps=0, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def _fresh(pocket):
    model, _ = pocket
    return frozen_copy(model).train().requires_grad_(True)


def test_xpo_with_alpha_zero_is_online_dpo_step_for_step(tmp_path, pocket_reviews):
    tok = pocket_reviews[1]
    dpo = train(_config(tmp_path, "online_dpo"), model=_fresh(pocket_reviews), tokenizer=tok)
    xpo = train(_config(tmp_path, "xpo", xpo_alpha=0.0, xpo_pairs="policy"), model=_fresh(pocket_reviews),
                tokenizer=tok)
    for a, b in zip(dpo.history, xpo.history):
        for k in a:
            assert a[k] == b[k], k
    for (name, p), q in zip(dpo.model.named_parameters(), xpo.model.parameters()):
        assert torch.equal(p, q), name
    # and with α > 0 the run differs
    other = train(_config(tmp_path, "xpo", xpo_alpha=0.5, xpo_pairs="policy", output_dir=str(tmp_path / "x2")),
                  model=_fresh(pocket_reviews), tokenizer=tok)
    assert other.history[-1]["loss"] != xpo.history[-1]["loss"]


def test_exploration_bonus_pushes_down_the_reference_samples(pocket_reviews, shifted, reviews_world):
    """The bonus's gradient is +α ∇ℓ_θ(y'): a descent step lowers log π_θ on π_ref's samples (raises KL(π_ref‖π))."""
    ref, tok = pocket_reviews
    batch = _source(shifted, ref, tok, reviews_world, "reference").micro_batch(0, 0, 0)

    def grads(alpha):
        policy = frozen_copy(shifted).train().requires_grad_(True)
        ctx = StepContext(model=policy, reference=Reference(ref), config=TrainConfig(method="xpo", xpo_alpha=alpha))
        loss, metrics = xpo_step(ctx, batch)
        loss.backward()
        return policy, [p.grad.clone() for p in policy.parameters()]

    policy, g1 = grads(1.0)
    _, g0 = grads(0.0)

    def explore_logp(model):
        with torch.no_grad():
            return sequence_logprobs(model, batch["explore_input_ids"], batch["explore_attention_mask"],
                                     batch["explore_completion_mask"])[0].mean().item()

    before = explore_logp(policy)
    with torch.no_grad():  # a small step along −(gradient of the bonus alone)
        for p, a, b in zip(policy.parameters(), g1, g0):
            p.sub_(1e-3 * (a - b))
    after = explore_logp(policy)
    print(f"mean log π_θ(y'), y' ~ π_ref: {before:.4f} → {after:.4f}")
    assert after < before - 1e-3


@pytest.mark.parametrize("method,extra", [("xpo", {"xpo_alpha": 0.05}), ("selm", {"selm_alpha": 1.0}),
                                          ("copg", {})])
def test_methods_train_and_resume_exactly(tmp_path, pocket_reviews, method, extra):
    tok = pocket_reviews[1]
    full = train(_config(tmp_path, method, **extra), model=_fresh(pocket_reviews), tokenizer=tok)
    assert len(full.history) == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in full.history)
    half = _config(tmp_path, method, output_dir=str(tmp_path / f"{method}-resumed"), **extra)
    train(dataclasses.replace(half, max_steps=2), model=_fresh(pocket_reviews), tokenizer=tok)
    resumed = train(half, model=_fresh(pocket_reviews), tokenizer=tok)
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in full.history], abs=1e-6)
    for (name, p), q in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(q, p, msg=name)


def test_copg_reads_each_completions_reward(tmp_path, pocket_reviews, reviews_world):
    """The copg batch carries R(y), R(y') of the two samples: the gold reward of the decoded rows."""
    from alignlib.loop import SourceContext
    from alignlib.methods import METHODS

    model, tok = pocket_reviews
    config = _config(tmp_path, "copg")
    ctx = SourceContext(config, lambda: model, tok, reviews_world.prompts("train"), reviews_world.gold_reward,
                        Reference(model), 1, None)
    source = METHODS["copg"].source(ctx)
    batch = source.micro_batch(0, 0, 0)
    texts = _decode(tok, batch["input_ids"], batch["completion_mask"])
    prompts = source.step_prompts(0, 0, 0)
    gold = reviews_world.gold_reward(prompts + prompts, texts)
    assert batch["scores"].tolist() == pytest.approx(gold, abs=1e-6)


def test_config_and_inputs_are_checked(pocket_reviews, reviews_world):
    with pytest.raises(ValueError, match="xpo_alpha, selm_alpha and apo_alpha must be ≥ 0"):
        TrainConfig(method="xpo", xpo_alpha=-1.0)
    with pytest.raises(ValueError, match="xpo_pairs"):
        TrainConfig(method="xpo", xpo_pairs="both")
    with pytest.raises(ValueError, match="beta must be > 0"):
        TrainConfig(method="selm", beta=0.0)
    with pytest.raises(ValueError, match="train with --method copg"):
        TrainConfig(method="dpo", loss_type="copg")
    model, tok = pocket_reviews
    with pytest.raises(ValueError, match="precomputed"):
        ExplorationPairs(lambda: model, tok, ["p"], judge=None, reference=Reference(precomputed=True), **COMMON)


def test_apo_extrapolates_between_rounds(tmp_path, pocket_reviews):
    """Round 2 starts from, and is anchored to, θ̃_1 = θ_1 + α(θ_1 − θ_0); α = 0 is iterative DPO."""
    model, tok = pocket_reviews
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    config = _config(tmp_path, "online_dpo", max_steps=2, save_steps=0)
    results = accelerated_iterate(config, _fresh(pocket_reviews), tok, rounds=2, alpha=0.5,
                                  callback=lambda t, r, nxt: seen.append(
                                      ({k: v.clone() for k, v in r.model.state_dict().items()},
                                       {k: v.clone() for k, v in nxt.state_dict().items()})))
    assert len(results) == 2 and (tmp_path / "online_dpo" / "round-1" / "final").exists()
    theta1, tilde1 = seen[0]
    expected = apo_extrapolate(theta1, theta0, 0.5)
    for k, v in results[1].reference.model.state_dict().items():
        torch.testing.assert_close(v, expected[k])  # round 2's reference is the extrapolated iterate
        torch.testing.assert_close(tilde1[k], expected[k])
    assert any(not torch.equal(theta1[k], tilde1[k]) for k in theta1)
    with pytest.raises(ValueError, match="rounds must be ≥ 1"):
        accelerated_iterate(config, model, tok, rounds=0, alpha=0.1)
    with pytest.raises(ValueError, match="α must be ≥ 0"):
        accelerated_iterate(config, model, tok, rounds=1, alpha=-0.1)


def test_sample_diversity_of_the_reference_against_itself(pocket_reviews, reviews_world):
    model, tok = pocket_reviews
    d = sample_diversity(model, model, tok, reviews_world.prompts("eval")[:6], samples_per_prompt=4,
                         max_new_tokens=16, seed=0)
    assert 0 < d["distinct"] <= 1 and d["entropy"] > 0
    assert d["kl_ref"] == pytest.approx(0.0, abs=1e-5)  # KL(π ‖ π) = 0 sample by sample
