"""RAFT and SuperHF: the batches they train on, their losses, bad input, and a seeded gold effect.

RAFT (Dong et al. 2023): sample k completions per prompt, keep the top one(s)
by reward, fine-tune on them with cross-entropy. SuperHF (Mukobi et al. 2023):
the same filtered samples, plus c · KL(π_ref ‖ π_θ) per token as a prior.
"""

from __future__ import annotations

import dataclasses
import statistics

import pytest
import torch

from alignlib import methods
from alignlib.config import TrainConfig
from alignlib.evaluate import evaluate_policy
from alignlib.logprobs import sequence_logprobs
from alignlib.loop import train
from alignlib.losses.group import raft_select, superhf_loss

K = 4  # samples per prompt


def _cfg(tmp_path, method, **kw):
    settings = dict(method=method, output_dir=str(tmp_path / method), seed=0, max_steps=2, learning_rate=1e-4,
                    per_device_train_batch_size=3, samples_per_prompt=K, beta=0.1, max_new_tokens=12,
                    save_steps=0, progress=False, logging_steps=0, overwrite_output_dir=True)
    settings.update(kw)
    return TrainConfig(**settings)


@pytest.fixture
def spy(monkeypatch):
    """Replace a method's step by one that records (batch, loss, kept rows) and then runs the real step."""
    seen = []

    def install(name):
        real = methods.METHODS[name]

        def step(ctx, batch):
            loss, metrics = real.step(ctx, batch)
            best = raft_select(batch["scores"], K, keep=1.0 / K)
            seen.append(dict(batch={k: v.detach().clone() for k, v in batch.items()}, loss=loss.item(),
                             metrics=metrics, nll_of_best=_token_mean_nll(ctx.model, batch, best)))
            return loss, metrics

        monkeypatch.setitem(methods.METHODS, name, dataclasses.replace(real, step=step))
        return seen

    return install


def _length_reward(prompts, responses):
    """A reward with an obvious best sample: the number of characters (ties are rare at 12 tokens)."""
    return [float(len(r)) for r in responses]


def _token_mean_nll(model, batch, rows):
    """Token-averaged NLL of the completion tokens of `rows`, computed independently of the method's code."""
    ids, attn, cmask = (batch[k][rows] for k in ("input_ids", "attention_mask", "completion_mask"))
    with torch.no_grad():
        _, token_lp, mask = sequence_logprobs(model, ids, attn, cmask)
    return (-(token_lp * mask).sum() / mask.sum()).item()


@pytest.mark.parametrize("method", ["raft", "superhf"])
def test_trains_on_the_best_of_each_prompts_k_samples_through_train(tmp_path, spy, method):
    seen = spy(method)
    result = train(_cfg(tmp_path, method), reward_fn=_length_reward)
    assert len(seen) == 2 and len(result.history) == 2
    for record in seen:
        batch = record["batch"]
        scores = batch["scores"].view(-1, K)
        assert scores.shape == (3, K)  # 3 prompts × K fresh samples per optimizer step
        # the kept rows are the arg-max of each prompt's group: RAFT's "local" ranking with keep = 1/k
        best = raft_select(batch["scores"], K, keep=1.0 / K)
        assert best.tolist() == [g * K + int(scores[g].argmax()) for g in range(3)]
        assert record["metrics"]["kept_score"] == pytest.approx(scores.max(1).values.mean().item())
        assert record["metrics"]["score"] == pytest.approx(scores.mean().item())
    # the first step's loss is the token-mean cross-entropy of the kept rows, recomputed independently (at step 1
    # the policy is π_ref, so SuperHF's KL prior is 0 there too)
    assert seen[0]["loss"] == pytest.approx(seen[0]["nll_of_best"], rel=1e-4, abs=1e-5)


def test_superhf_adds_the_kl_prior_and_is_raft_at_c_zero(tmp_path, spy):
    seen = spy("superhf")
    train(_cfg(tmp_path, "superhf", max_steps=4, learning_rate=1e-3, beta=0.5), reward_fn=_length_reward)
    kls = [r["metrics"]["objective/kl"] for r in seen]
    assert kls[0] == pytest.approx(0.0, abs=1e-6)  # step 1: the policy is π_ref
    assert all(k > 0 for k in kls[1:])  # afterwards the prior is active ...
    for r in seen:  # ... and the loss is CE + c · KL
        m = r["metrics"]
        assert m["loss"] == pytest.approx(m["loss/sft"] + 0.5 * max(m["objective/kl"], 0.0), rel=1e-5)
    # c = 0 (beta 0) is RAFT: same seed → same samples, same kept rows, same losses
    raft_seen = spy("raft")
    train(_cfg(tmp_path / "r", "raft", max_steps=2), reward_fn=_length_reward)
    zero = spy("superhf")
    train(_cfg(tmp_path / "s", "superhf", max_steps=2, beta=0.0), reward_fn=_length_reward)
    raft_seen, zero = raft_seen[-2:], zero[-2:]
    for a, b in zip(raft_seen, zero):
        assert torch.equal(a["batch"]["input_ids"], b["batch"]["input_ids"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_superhf_loss_limits_and_gradient_direction():
    gen = torch.Generator().manual_seed(0)
    B, T, V = 3, 5, 7
    logits = torch.randn(B, T, V, generator=gen)
    labels = torch.randint(0, V, (B, T), generator=gen)
    mask = torch.ones(B, T)
    mask[1, 3:] = 0
    # identical policy and prior: KL 0, the loss is the token-mean cross-entropy whatever c is
    loss, m = superhf_loss(logits, logits, labels, mask, kl_coef=3.0)
    ce = -(torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1) * mask).sum() / mask.sum()
    assert m["objective/kl"] == pytest.approx(0.0, abs=1e-6) and loss.item() == pytest.approx(ce.item(), rel=1e-6)
    # the KL term's gradient w.r.t. the policy logits is (p_θ − p_orig) · m / Σm: it pulls π_θ towards π_orig
    orig = torch.randn(B, T, V, generator=gen)
    x = logits.clone().requires_grad_()
    base, _ = superhf_loss(x, orig, labels, mask, kl_coef=0.0)
    full, _ = superhf_loss(x, orig, labels, mask, kl_coef=1.0)
    (g_kl,) = torch.autograd.grad(full - base, x)
    expected = (torch.softmax(logits, -1) - torch.softmax(orig, -1)) * mask[..., None] / mask.sum()
    torch.testing.assert_close(g_kl, expected, rtol=1e-4, atol=1e-6)
    # a larger c never lowers the loss (the KL is ≥ 0), and padded tokens do not count
    losses = [superhf_loss(logits, orig, labels, mask, kl_coef=c)[0].item() for c in (0.0, 0.1, 1.0)]
    assert losses == sorted(losses) and losses[0] < losses[-1]
    noisy = logits.clone()
    noisy[1, 3:] = 100 * torch.randn(2, V, generator=gen)
    assert superhf_loss(noisy, orig, labels, mask, 1.0)[0].item() == pytest.approx(
        superhf_loss(logits, orig, labels, mask, 1.0)[0].item(), rel=1e-6)


def test_raft_select_keeps_the_top_fraction():
    scores = torch.tensor([0.1, 0.9, -0.4, 0.3, 1.2, -1.0, 0.2, 0.0])
    assert raft_select(scores, 4, keep=0.25).tolist() == [1, 4]  # best of each prompt
    assert raft_select(scores, 4, keep=0.5).tolist() == [1, 3, 4, 6]  # top 2 of each prompt
    assert raft_select(scores, 4, keep=0.25, strategy="top").tolist() == [1, 4]  # top 2 of the batch
    assert raft_select(scores, 4, keep=1.0).tolist() == list(range(8))  # SFT on all own samples


def test_bad_input_is_refused_with_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="samples_per_prompt must be ≥ 2"):
        _cfg(tmp_path, "raft", samples_per_prompt=1)
    with pytest.raises(ValueError, match="keep must be in"):
        raft_select(torch.zeros(8), 4, keep=0.0)
    with pytest.raises(ValueError, match="strategy"):
        raft_select(torch.zeros(8), 4, strategy="global")
    with pytest.raises(ValueError):
        raft_select(torch.zeros(7), 4)  # not a whole number of groups
    with pytest.raises(ValueError, match="labels"):
        superhf_loss(torch.zeros(2, 3, 5), torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4))
    with pytest.raises(ValueError, match="kl_coef"):
        superhf_loss(torch.zeros(2, 3, 5), torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long),
                     torch.ones(2, 3), kl_coef=-1.0)
    with pytest.raises(ValueError, match="non-finite"):
        train(_cfg(tmp_path, "superhf", max_steps=1), reward_fn=lambda p, r: [float("nan")] * len(p))


def test_raft_raises_gold_reward_and_superhf_prior_keeps_it_closer(tmp_path, reviews_world, pocket_reviews):
    """Gold reward: RAFT beats SFT on 3 seeds; a strong SuperHF prior (c = 1) travels less KL than RAFT (c = 0)."""
    gains, kl_raft, kl_superhf = [], [], []
    for seed in (0, 1, 2):
        common = dict(seed=seed, max_steps=24, learning_rate=3e-4, per_device_train_batch_size=4, max_new_tokens=24)
        evs = {}
        for method, beta in (("raft", 0.0), ("superhf", 1.0)):
            r = train(_cfg(tmp_path / f"{method}{seed}", method, beta=beta, **common))
            evs[method] = evaluate_policy(r.model, pocket_reviews[0], r.tokenizer, reviews_world,
                                          samples_per_prompt=4, max_new_tokens=24, seed=3)
        print(seed, {m: (round(e.gold_reward, 3), round(e.kl, 2)) for m, e in evs.items()})
        raft = evs["raft"]
        assert raft.gold_reward - raft.gold_reward_ci > raft.ref_gold_reward
        gains.append(raft.gold_reward - raft.ref_gold_reward)
        kl_raft.append(raft.kl)
        kl_superhf.append(evs["superhf"].kl)
    assert statistics.fmean(gains) > 3 * statistics.stdev(gains)
    assert all(s < r for s, r in zip(kl_superhf, kl_raft))
