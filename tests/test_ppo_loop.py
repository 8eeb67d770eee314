"""PPO in the one loop (`--method ppo`, alignlib.ppo): rollouts, critic, minibatch epochs, exact resume."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from alignlib.config import TrainConfig
from alignlib.loop import train


def _config(tmp_path, name="ppo", **kw):
    base = dict(method="ppo", output_dir=str(tmp_path / name), max_steps=8, learning_rate=3e-4,
                per_device_train_batch_size=4, gradient_accumulation_steps=2, num_mini_batches=2, ppo_epochs=2,
                beta=0.05, max_new_tokens=16, save_steps=0, progress=False, logging_steps=0)
    base.update(kw)
    return TrainConfig(**base)


def test_ppo_runs_and_the_first_minibatch_of_each_rollout_is_on_policy(tmp_path):
    """Steps 1, 5 (first of each rollout): ratio 1, nothing clipped; later minibatches move off-policy."""
    result = train(_config(tmp_path))
    h = result.history
    assert len(h) == 8 and all(math.isfinite(v) for r in h for v in r.values())
    steps_per_rollout = 4
    for i in range(0, 8, steps_per_rollout):
        assert h[i]["ratio"] == pytest.approx(1.0, abs=1e-5), h[i]
        assert h[i]["clipfrac"] == 0.0 and h[i]["approxkl"] < 1e-9
        # one rollout: its score, KL and β are shared by all its steps
        assert len({(r["score"], r["kl"], r["kl_coef"]) for r in h[i:i + steps_per_rollout]}) == 1
        assert max(abs(r["ratio"] - 1.0) for r in h[i + 1:i + steps_per_rollout]) > 1e-5  # the policy did move
    assert h[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the first rollout is sampled by π_ref itself
    assert h[0]["value_mean"] == 0.0 and h[4]["value_mean"] != 0.0  # the critic's head starts at 0 and is trained
    final = result.output_dir / "final"
    assert (final / "config.json").exists() and (final / "critic" / "value_head.pt").exists()
    assert isinstance(result.model, torch.nn.Module) and hasattr(result.model, "generate")  # the policy, unwrapped


def test_ppo_resumes_exactly_with_its_critic_and_adaptive_kl(tmp_path, interrupt_and_resume):
    """Interrupted in the 3rd rollout (checkpoint at step 4), PPO resumes and ends where the uninterrupted run ends."""
    cfg = _config(tmp_path, "full", max_steps=6, save_steps=2, num_mini_batches=1, gradient_accumulation_steps=1,
                  kl_target=0.01, kl_horizon=100, beta=0.2)
    reference = train(cfg)
    betas = [r["kl_coef"] for r in reference.history[::2]]
    assert betas[0] == pytest.approx(0.2) and len(set(betas)) == 3  # the adaptive controller changed β per rollout
    resumed = interrupt_and_resume(dataclasses.replace(cfg, output_dir=str(tmp_path / "interrupted")), "ppo", 5)
    worst = max(abs(a[k] - b[k]) for a, b in zip(resumed.history, reference.history) for k in a)
    weights = max((p - q).abs().max().item() for p, q in zip(resumed.model.parameters(),
                                                             reference.model.parameters()))
    heads = [torch.load(tmp_path / d / "final" / "critic" / "value_head.pt") for d in ("full", "interrupted")]
    head_diff = max((heads[0][k] - heads[1][k]).abs().max().item() for k in heads[0])
    print(f"ppo resume: history diff {worst:.3g}, policy weight diff {weights:.3g}, value head diff {head_diff:.3g}")
    assert len(resumed.history) == 6 and worst <= 1e-6 and weights <= 1e-6 and head_diff <= 1e-6


@pytest.mark.parametrize("kw, message", [
    (dict(save_steps=5), "save_steps .5. must be a multiple of ppo_epochs × num_mini_batches .4."),
    (dict(max_steps=6, save_steps=0), "max_steps .6. must be a multiple"),
    (dict(kl_estimator="k4"), "kl_estimator must be k1, k2 or k3"),
    (dict(cliprange=0.0), "cliprange and cliprange_value must be > 0"),
    (dict(lam=1.5), "gamma and lam must be in"),
    (dict(ppo_epochs=0), "ppo_epochs must be ≥ 1"),
    (dict(kl_target=-1.0), "kl_target must be > 0"),
    (dict(temperature=0.7), "ppo samples at temperature 1"),
])
def test_bad_ppo_config_is_refused(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **kw)


@pytest.mark.parametrize("reward, message", [
    (lambda prompts, responses: [float("nan")] * len(prompts), "non-finite score"),
    (lambda prompts, responses: [1.0] * (len(prompts) - 1), "one score per completion"),
])
def test_bad_reward_function_is_refused(tmp_path, reward, message):
    with pytest.raises(ValueError, match=message):
        train(_config(tmp_path, max_steps=4), reward_fn=reward)


def test_kl_estimate_is_positive_under_pure_sampling_and_negative_under_truncation(pocket_reviews):
    """The negative-KL pitfall: k1 on samples from π is an unbiased KL(π‖π_ref) ≥ 0; on top-k samples it is not.

    π is π_ref with its logits halved (a flatter policy, KL > 0). PPO's rollout samples
    purely (temperature 1, no top-k/top-p) and its mean sequence k1 is positive; the
    same estimate on top-k samples reads log π − log π_ref only on tokens where the
    sharper π_ref puts more mass than π, and comes out negative.
    """
    import copy

    from alignlib.evaluate import completion_logprobs
    from alignlib.models import Reference
    from alignlib.ppo import PolicyWithCritic, PPORollouts
    from alignlib.rollout import sample
    from alignlib.worlds import get_world

    ref, tok = pocket_reviews
    flat = copy.deepcopy(ref)
    # logits / 2, i.e. π ∝ π_ref^(1/2); a new head parameter unties it from the input embeddings
    flat.lm_head.weight = torch.nn.Parameter(ref.lm_head.weight.detach().clone() * 0.5)
    prompts = get_world("reviews").prompts("train")
    cfg = TrainConfig(method="ppo", beta=0.05, max_new_tokens=16)
    src = PPORollouts(lambda: PolicyWithCritic(flat, 0.05), tok, prompts, reward_fn=lambda p, r: [0.0] * len(p),
                      reference=Reference(ref), config=cfg, per_device=32, accumulation=1, world_size=1, seed=0,
                      max_new_tokens=16)
    pure_kl = src.rollout(0, 0).metrics["kl"]
    truncated = sample(flat, tok, prompts[:32], max_new_tokens=16, top_k=3, seed=0)
    truncated_kl = (completion_logprobs(flat, truncated, tok.pad_token_id)
                    - completion_logprobs(ref, truncated, tok.pad_token_id)).mean().item()
    print(f"k1 sequence KL estimate: pure sampling {pure_kl:.3f}, top-k=3 sampling {truncated_kl:.3f}")
    assert pure_kl > 0.5 and truncated_kl < 0.0


def test_ppo_trains_under_ddp_with_a_shared_adaptive_kl(tmp_path):
    """Two gloo processes (accelerate launch): the critic rides in the DDP module, β adapts in step on every rank."""
    from test_train_invariants import launch_ddp

    out = tmp_path / "ddp"
    flags = ["--method", "ppo", "--world", "reviews", "--max_steps", "4", "--save_steps", "2",
             "--per_device_train_batch_size", "4", "--num_mini_batches", "1", "--ppo_epochs", "2",
             "--kl_target", "0.01", "--kl_horizon", "100", "--beta", "0.2", "--max_new_tokens", "12",
             "--learning_rate", "3e-4", "--logging_steps", "0", "--no_progress", "--output_dir", str(out)]
    h = launch_ddp(tmp_path / "ddp.json", flags)["history"]
    assert [r["ratio"] for r in h[::2]] == pytest.approx([1.0, 1.0], abs=1e-5)
    assert h[0]["kl_coef"] == pytest.approx(0.2) and h[2]["kl_coef"] < 0.2  # rollout 1 is π_ref (KL 0 < target): β went down
    assert (out / "final" / "critic" / "value_head.pt").exists() and (out / "checkpoint-2").exists()
