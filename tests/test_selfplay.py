"""Self-play in the one loop (alignlib.selfplay): batch sources, mixture sampling, steps, the outer iteration."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from alignlib import nash_games as ng
from alignlib.config import TrainConfig
from alignlib.loop import train
from alignlib.losses.nash import sppo_group_loss, sppo_loss
from alignlib.models import frozen_copy
from alignlib.online import judge_by_oracle, sampling_seed
from alignlib.rollout import sample
from alignlib.selfplay import (
    InpoPairs,
    NashMDPairs,
    WinRateGroups,
    _preference,
    best_and_worst,
    iterate,
    sample_mixture,
)
from alignlib.worlds import get_world


@pytest.fixture(scope="module")
def world():
    return get_world("intransitive")


@pytest.fixture(scope="module")
def pocket():
    from alignlib.pocket import load_pocket

    return load_pocket("intransitive")


@pytest.fixture(scope="module")
def shifted(pocket):
    """A policy that differs from the SFT model: its output layer's bias-free weights perturbed."""
    model, _ = pocket
    other = frozen_copy(model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        other.lm_head.weight.add_(0.5 * torch.randn(other.lm_head.weight.shape, generator=g))
    return other


def _decode(tok, batch):
    return [tok.decode(row[m.bool()], skip_special_tokens=True).strip()
            for row, m in zip(batch["input_ids"], batch["completion_mask"])]


COMMON = {"per_device": 4, "accumulation": 2, "world_size": 1, "seed": 3, "max_new_tokens": 24}


def test_mixture_sampler_limits(pocket, shifted, world):
    """c = 0 draws exactly the policy's samples (same seed), c = 1 the reference's; in between
    the samples differ from both."""
    model, tok = pocket
    prompts = world.prompts("train")[:12]
    at0 = sample_mixture(shifted, model, tok, prompts, 0.0, max_new_tokens=24, seed=7)
    assert at0.texts == sample(shifted, tok, prompts, max_new_tokens=24, seed=7).texts
    assert at0.completion_ids == sample(shifted, tok, prompts, max_new_tokens=24, seed=7).completion_ids
    at1 = sample_mixture(shifted, model, tok, prompts, 1.0, max_new_tokens=24, seed=7)
    assert at1.texts == sample(model, tok, prompts, max_new_tokens=24, seed=7).texts
    assert at0.texts != at1.texts  # the perturbation matters, so the two limits are distinct checks
    with pytest.raises(ValueError, match="mixture_coef must be in"):
        sample_mixture(shifted, model, tok, prompts, 1.5)
    with pytest.raises(ValueError, match="separate reference model"):
        sample_mixture(shifted, None, tok, prompts, 0.5)


def test_nash_md_source_judges_policy_samples_against_the_mixture(pocket, shifted, world):
    model, tok = pocket
    src = NashMDPairs(lambda: shifted, tok, world.prompts("train"), reference=model,
                      preference=_preference(world), mixture_coef=0.5, **COMMON)
    a, b = src.micro_batch(2, 1, 0), src.micro_batch(2, 1, 0)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # a micro-batch is a function of (seed, step, micro, rank)
    assert a["input_ids"].shape[0] == 4 and a["probabilities"].shape == (4,)
    prompts = src.step_prompts(2, 1, 0)
    mine = _decode(tok, a)
    assert mine == sample(shifted, tok, prompts, max_new_tokens=24,
                          seed=sampling_seed(3, 2, 1, 0)).texts
    opponent = sample_mixture(shifted, model, tok, prompts, 0.5, max_new_tokens=24,
                              seed=sampling_seed(3, 2, 1, 0) + 1).texts
    expected = world.preference_probability(prompts, mine, opponent)
    assert a["probabilities"].tolist() == pytest.approx(expected, abs=1e-6)
    # c = 0 skips the reference's passes but must judge against the same draws as the mixture sampler
    self_play = NashMDPairs(lambda: shifted, tok, world.prompts("train"), reference=model,
                            preference=_preference(world), mixture_coef=0.0, **COMMON).micro_batch(2, 1, 0)
    seed = sampling_seed(3, 2, 1, 0)
    opponent0 = sample_mixture(shifted, model, tok, prompts, 0.0, max_new_tokens=24, seed=seed + 1).texts
    assert self_play["probabilities"].tolist() == pytest.approx(
        world.preference_probability(prompts, mine, opponent0), abs=1e-6)


def test_win_rate_groups_are_prompt_major_and_average_one_half(pocket, world):
    model, tok = pocket
    src = WinRateGroups(lambda: model, tok, world.prompts("train"), preference=_preference(world),
                        samples_per_prompt=3, **COMMON)
    batch = src.micro_batch(0, 0, 0)
    assert batch["input_ids"].shape[0] == 12 and batch["win_rates"].shape == (12,)
    prompts = src.step_prompts(0, 0, 0)
    texts = _decode(tok, batch)
    rates = ng.group_win_rates(world.preference_probability, prompts, texts, 3)
    np.testing.assert_allclose(batch["win_rates"].numpy(), rates.reshape(-1), atol=1e-6)
    # P + Pᵀ = 1, so the win rates of a group against itself average exactly ½
    np.testing.assert_allclose(batch["win_rates"].view(4, 3).mean(-1).numpy(), 0.5, atol=1e-6)
    w, l = best_and_worst(batch["win_rates"], 3)
    assert (batch["win_rates"][w] >= batch["win_rates"][l]).all()
    assert ((w // 3) == torch.arange(4)).all() and ((l // 3) == torch.arange(4)).all()
    with pytest.raises(ValueError, match="samples_per_prompt ≥ 2"):
        WinRateGroups(lambda: model, tok, ["p"], preference=_preference(world), samples_per_prompt=1, **COMMON)


def test_inpo_pairs_carry_anchor_logprobs(pocket, shifted, world):
    from alignlib.logprobs import sequence_logprobs

    model, tok = pocket
    src = InpoPairs(lambda: shifted, tok, world.prompts("train"), judge=judge_by_oracle(world), anchor=model,
                    **COMMON)
    batch = src.micro_batch(0, 0, 0)
    assert batch["input_ids"].shape[0] == 8 and batch["anchor_logps"].shape == (8,)
    lp = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])[0]
    torch.testing.assert_close(batch["anchor_logps"], lp.detach())


def test_bad_oracle_values_raise(pocket, world):
    """A preference oracle that returns scores instead of probabilities is refused with a clear error."""
    model, tok = pocket
    src = WinRateGroups(lambda: model, tok, world.prompts("train"), samples_per_prompt=2,
                        preference=lambda x, a, b: _preference(world)(x, a, b)[:-1] + [1.7], **COMMON)
    with pytest.raises(ValueError, match=r"must .*in \[0, 1\]"):
        src.micro_batch(0, 0, 0)
    bad = type("Bad", (), {"name": "bad", "preference_probability": lambda self, x, a, b: [-0.2] * len(x)})()
    with pytest.raises(ValueError, match="bad world's preference_probability"):
        _preference(bad)(["x"], ["a"], ["b"])


def test_sppo_group_loss_is_sppo_loss_on_a_pair_layout():
    g = torch.Generator().manual_seed(0)
    pw, pl, rw, rl = (torch.randn(5, generator=g) for _ in range(4))
    ww, wl = torch.rand(5, generator=g), torch.rand(5, generator=g)
    pair, _ = sppo_loss(pw, pl, rw, rl, beta=0.25, chosen_win_rates=ww, rejected_win_rates=wl)
    group, metrics = sppo_group_loss(torch.cat([pw, pl]), torch.cat([rw, rl]), torch.cat([ww, wl]), eta=4.0)
    torch.testing.assert_close(group, pair)
    assert metrics["sppo/target"] == pytest.approx(4.0 * (torch.cat([ww, wl]).mean().item() - 0.5), abs=1e-6)
    with pytest.raises(ValueError, match="eta"):
        sppo_group_loss(pw, rw, ww, eta=0.0)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        sppo_group_loss(pw, rw, ww + 1.0, eta=1.0)


def test_config_validates_selfplay_fields():
    with pytest.raises(ValueError, match="mixture_coef"):
        TrainConfig(method="nash_md", world="intransitive", mixture_coef=1.5)
    with pytest.raises(ValueError, match="tau·eta"):
        TrainConfig(method="inpo", world="intransitive", eta=10.0, tau=0.2)
    with pytest.raises(ValueError, match="samples_per_prompt must be ≥ 2"):
        TrainConfig(method="sppo", world="intransitive", samples_per_prompt=1)
    with pytest.raises(ValueError, match="lora"):
        TrainConfig(method="nash_md", world="intransitive", lora=True)
    with pytest.raises(ValueError, match="selfplay_iterations"):
        TrainConfig(method="dno", world="intransitive", selfplay_iterations=0)
    with pytest.raises(ValueError, match="dno_margin"):
        TrainConfig(method="dno", world="intransitive", dno_margin=1.0)


def _config(tmp_path, method, **kw):
    base = {"method": method, "world": "intransitive", "output_dir": str(tmp_path / method), "max_steps": 4,
                "learning_rate": 2e-4, "per_device_train_batch_size": 4, "samples_per_prompt": 3, "beta": 0.05,
                "max_new_tokens": 24, "save_steps": 2, "progress": False, "logging_steps": 0, "seed": 1}
    base.update(kw)
    return TrainConfig(**base)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", ["nash_md", "sppo", "dno", "inpo"])
def test_each_method_trains_and_resumes_exactly(tmp_path, pocket, method):
    """Every self-play method runs in the one loop; a run stopped after 2 steps and resumed ends
    with the weights and history of an uninterrupted 4-step run."""
    model, tok = pocket
    full = train(_config(tmp_path, method), model=frozen_copy(model).train().requires_grad_(True), tokenizer=tok)
    assert len(full.history) == 4 and all(np.isfinite(r["loss"]) for r in full.history)
    half = _config(tmp_path, method, output_dir=str(tmp_path / f"{method}-resumed"))
    train(dataclasses.replace(half, max_steps=2), model=frozen_copy(model).train().requires_grad_(True),
          tokenizer=tok)
    resumed = train(half, model=frozen_copy(model).train().requires_grad_(True), tokenizer=tok)
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in full.history], abs=1e-6)
    for k, v in _weights(full.model).items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v)


def test_iterate_uses_the_previous_iterate_as_reference(tmp_path, pocket):
    model, tok = pocket
    snapshots = []
    results = iterate(_config(tmp_path, "inpo", max_steps=2, save_steps=0), model=frozen_copy(model).train()
                      .requires_grad_(True), tokenizer=tok, iterations=2,
                      callback=lambda t, r: snapshots.append(_weights(r.model)))
    assert len(results) == 2 and (tmp_path / "inpo" / "iter-1" / "final").exists()
    for k, v in results[1].reference.model.state_dict().items():
        torch.testing.assert_close(v, snapshots[0][k])  # round 2's reference is round 1's result
    # INPO's fixed anchor is the initial model, saved once
    assert (tmp_path / "inpo" / "anchor" / "config.json").exists()
    with pytest.raises(ValueError, match="iterations must be ≥ 1"):
        iterate(_config(tmp_path, "sppo"), model=model, tokenizer=tok, iterations=0)
