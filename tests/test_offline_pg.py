"""A-LoL (alignlib.losses.offline_pg): limits, gradient, advantage filter, ratio clip, the method in the loop."""

from __future__ import annotations

import copy

import pytest
import torch

from alignlib.losses.offline_pg import a_lol_loss, group_mean_advantages


def test_unit_advantage_without_weight_is_sequence_nll():
    lp = torch.tensor([-3.0, -5.0, -1.5])
    loss, _ = a_lol_loss(lp, lp + 0.7, torch.ones(3), epsilon=0.0)
    assert loss.item() == pytest.approx(-lp.mean().item())


def test_gradient_is_minus_positive_advantage_times_clipped_detached_ratio():
    lp = torch.tensor([-2.0, -2.0, -2.0, -2.0], requires_grad=True)
    ref = torch.tensor([-2.0, -4.0, -1.0, -2.0])  # ratios 1, e², e⁻¹, 1
    adv = torch.tensor([0.5, 1.0, 2.0, -3.0])
    loss, m = a_lol_loss(lp, ref, adv, epsilon=0.9)
    loss.backward()
    w = torch.tensor([1.0, 1.9, torch.tensor(-1.0).exp().item(), 1.0])  # e² clipped to 1 + ε; e⁻¹ stays
    expected = -(adv.clamp(min=0) * w) / 4
    torch.testing.assert_close(lp.grad, expected)
    assert lp.grad[3] == 0  # negative advantage: dropped
    assert m["kept_fraction"] == pytest.approx(0.75)


def test_zero_and_negative_advantages_give_no_gradient():
    lp = torch.randn(5, requires_grad=True)
    loss, _ = a_lol_loss(lp, torch.randn(5), torch.tensor([0.0, -1.0, -0.1, 0.0, -5.0]))
    loss.backward()
    assert torch.count_nonzero(lp.grad) == 0


def test_group_mean_advantages():
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 4.0]])
    a = group_mean_advantages(r)
    torch.testing.assert_close(a.sum(1), torch.zeros(2))
    loo = group_mean_advantages(r, leave_one_out=True)
    # leave-one-out: R_i − mean of the others
    torch.testing.assert_close(loo[0, 3], r[0, 3] - r[0, :3].mean())


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="1-D of one length"):
        a_lol_loss(torch.zeros(3), torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="epsilon"):
        a_lol_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3), epsilon=1.5)
    with pytest.raises(ValueError, match="NaN or inf"):
        a_lol_loss(torch.zeros(2), torch.zeros(2), torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        group_mean_advantages(torch.zeros(4))
    from alignlib import TrainConfig

    with pytest.raises(ValueError, match="alol_clip"):
        TrainConfig(method="a_lol", alol_clip=2.0)


def test_a_lol_trains_in_the_one_loop(pocket_reviews, tmp_path):
    from alignlib import TrainConfig, train

    model, tok = pocket_reviews
    texts = ["the pizza was good .", "the pizza was bad .", "the staff was rude ."]
    rows = [{"prompt": "review the pizza :", "completions": texts, "scores": [1.0, -1.0, -0.5]}] * 4
    cfg = TrainConfig(method="a_lol", world="reviews", max_steps=2, per_device_train_batch_size=2,
                      samples_per_prompt=3, learning_rate=1e-3, save_steps=0, logging_steps=0, progress=False,
                      output_dir=str(tmp_path), overwrite_output_dir=True)
    result = train(cfg, model=copy.deepcopy(model), tokenizer=tok, dataset=rows)
    first = result.history[0]
    assert first["kept_fraction"] == pytest.approx(1 / 3)  # one of three completions beats its prompt's mean
    assert first["ratio"] == pytest.approx(1.0, abs=1e-5)  # the policy starts at π_ref
    from alignlib.data import collate, encode_completion, encode_prompt
    from alignlib.logprobs import sequence_logprobs

    batch = collate([(encode_prompt(tok, "review the pizza :", None), encode_completion(tok, c, None)[0])
                     for c in rows[0]["completions"]], tok.pad_token_id)
    with torch.no_grad():
        before = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])[0]
        after = sequence_logprobs(result.model, batch["input_ids"], batch["attention_mask"],
                                  batch["completion_mask"])[0]
    assert after[0] > before[0]  # the one positive-advantage completion became more likely
