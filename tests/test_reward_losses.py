"""Reward-model losses (alignlib/losses/reward.py): properties, and parity with TRL's RewardTrainer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from alignlib.losses import bradley_terry_loss, ensemble_reward, preference_strength


def test_equal_rewards_give_log_2():
    r = torch.randn(6)
    loss, metrics = bradley_terry_loss(r, r.clone())
    assert loss.item() == pytest.approx(math.log(2))
    assert metrics["accuracy"] == 0.0 and metrics["margin"] == 0.0


def test_gradient_is_minus_sigmoid_of_minus_gap():
    """∂L/∂r_w = −σ(r_l − r_w + m)/B = −∂L/∂r_l (eq-bt-loss)."""
    rw = torch.tensor([0.3, -1.0, 2.0], requires_grad=True)
    rl = torch.tensor([0.1, 0.5, -1.0], requires_grad=True)
    m = torch.tensor([0.0, 0.2, 1.0])
    loss, _ = bradley_terry_loss(rw, rl, margin=m)
    loss.backward()
    expected = -torch.sigmoid(rl - rw + m).detach() / 3
    assert torch.allclose(rw.grad, expected, atol=1e-6)
    assert torch.allclose(rl.grad, -expected, atol=1e-6)


def test_shift_invariance_broken_only_by_centering():
    rw, rl = torch.randn(5), torch.randn(5)
    base, _ = bradley_terry_loss(rw, rl)
    shifted, _ = bradley_terry_loss(rw + 3.0, rl + 3.0)
    assert shifted.item() == pytest.approx(base.item(), abs=1e-6)
    c0, _ = bradley_terry_loss(rw, rl, center_rewards_coefficient=0.01)
    c3, _ = bradley_terry_loss(rw + 3.0, rl + 3.0, center_rewards_coefficient=0.01)
    assert c3.item() > c0.item()
    assert c0.item() == pytest.approx(base.item() + 0.01 * ((rw + rl) ** 2).mean().item(), abs=1e-6)


def test_margin_demands_a_larger_gap_and_smoothing_matches_its_formula():
    rw, rl = torch.tensor([1.0]), torch.tensor([0.0])
    plain, _ = bradley_terry_loss(rw, rl)
    with_margin, _ = bradley_terry_loss(rw, rl, margin=torch.tensor([1.0]))
    assert with_margin.item() == pytest.approx(math.log(2)) and plain.item() < with_margin.item()
    eps = 0.2
    smoothed, _ = bradley_terry_loss(rw, rl, label_smoothing=eps)
    assert smoothed.item() == pytest.approx(-(0.8 * F.logsigmoid(torch.tensor(1.0)) + 0.2 * F.logsigmoid(torch.tensor(-1.0))).item())
    with pytest.raises(ValueError, match="label_smoothing"):
        bradley_terry_loss(rw, rl, label_smoothing=0.5)
    with pytest.raises(ValueError, match="shape"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3))


def test_ensemble_aggregates_order_and_agreement():
    """WCO ≤ mean ≤ max; UWO ≤ mean, = mean when members agree; K = 1 is the member itself (no NaN)."""
    s = torch.randn(4, 10)
    mean, wco, uwo = (ensemble_reward(s, m) for m in ("mean", "wco", "uwo"))
    assert torch.all(wco <= mean + 1e-7) and torch.all(mean <= s.max(0).values + 1e-7)
    assert torch.all(uwo <= mean + 1e-7)
    assert torch.allclose(uwo, mean - 0.5 * s.var(0, unbiased=False))
    agree = torch.randn(1, 10).repeat(3, 1)
    assert torch.allclose(ensemble_reward(agree, "uwo"), agree[0])
    single = torch.randn(1, 5)
    for mode in ("mean", "wco", "uwo"):
        assert torch.allclose(ensemble_reward(single, mode), single[0])
    # reward-robust mix: λ = 1 is the mean, λ = 0 is WCO, in between it lies between them
    assert torch.allclose(ensemble_reward(s, "robust", robust_lambda=1.0), mean)
    assert torch.allclose(ensemble_reward(s, "robust", robust_lambda=0.0), wco)
    mid = ensemble_reward(s, "robust", robust_lambda=0.3)
    assert torch.allclose(mid, 0.3 * mean + 0.7 * wco) and torch.all((wco <= mid + 1e-7) & (mid <= mean + 1e-7))
    with pytest.raises(ValueError, match="robust_lambda"):
        ensemble_reward(s, "robust", robust_lambda=1.5)
    with pytest.raises(ValueError, match="unknown ensemble mode"):
        ensemble_reward(s, "max")
    with pytest.raises(ValueError, match=r"\[K, B\]"):
        ensemble_reward(torch.randn(5), "mean")


def test_preference_strength_ignores_per_member_offsets_and_flags_disagreement():
    chosen, rejected = torch.randn(3, 6), torch.randn(3, 6)
    u, s = preference_strength(chosen, rejected)
    offsets = torch.tensor([[5.0], [-2.0], [0.5]])
    u2, s2 = preference_strength(chosen + offsets, rejected + offsets)
    assert torch.allclose(u, u2, atol=1e-6) and torch.allclose(s, s2, atol=1e-6)
    u3, _ = preference_strength(rejected, chosen)  # swapping the pair flips the sign of û
    assert torch.allclose(u3, -u)


@pytest.fixture(scope="module")
def pocket_reward_model(pocket_reviews):
    from transformers import AutoModelForSequenceClassification

    from alignlib.pocket import pocket_dir

    _, tok = pocket_reviews
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(pocket_dir("reviews") / "sft", num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    return rm, tok


@pytest.mark.parametrize("with_margin,center", [(False, None), (True, None), (False, 0.01), (True, 0.01)])
def test_matches_trl_reward_trainer(pocket_reward_model, reviews_world, tmp_path, with_margin, center):
    """Our loss on the rewards of TRL's own batch equals RewardTrainer.compute_loss on that batch."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    rm, tok = pocket_reward_model
    ex = reviews_world.sft_examples(8, seed=0)
    # TRL joins prompt and completion as strings: the leading space keeps word boundaries for the pocket tokenizer
    rows = [{"prompt": e.prompt, "chosen": " " + e.completion, "rejected": " " + ex[(i + 1) % 8].completion}
            for i, e in enumerate(ex)]
    if with_margin:
        rows = [{**r, "margin": 0.25 * i} for i, r in enumerate(rows)]
    args = RewardConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none",
                        per_device_train_batch_size=4, center_rewards_coefficient=center)
    trainer = RewardTrainer(model=rm, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    assert ("margin" in batch) == with_margin
    trl_loss = trainer.compute_loss(trainer.model, dict(batch)).item()
    with torch.no_grad():
        rewards = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    chosen, rejected = rewards.chunk(2)  # TRL's layout: chosen rows, then rejected rows
    ours, _ = bradley_terry_loss(chosen, rejected, margin=batch.get("margin"), center_rewards_coefficient=center)
    assert abs(ours.item() - math.log(2)) > 1e-3  # a non-trivial comparison
    assert ours.item() == pytest.approx(trl_loss, abs=1e-5)
