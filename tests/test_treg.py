"""T-REG (token-level reward regularisation, Zhou et al. 2024; METHODS.md §3.13, our reading of it).

Checked here:
* the loss `t_reg_loss`: α = 0 is DPO exactly; constant token rewards (or τ → ∞) make the
  token-weighted term equal to DPO; the weights are n·softmax over a row's tokens and carry
  no gradient; the gradient pushes the chosen answer's high-reward tokens up more, and the
  rejected answer's low-reward tokens down more; bad input raises clear errors;
* the data path: "chosen_token_rewards"/"rejected_token_rewards" columns of pair rows reach
  the batch aligned token by token with the completion (hand-made example), and wrong
  lengths or a missing column raise DataError;
* through the one loop: `--method t_reg` with α = 0 trains the same weights as `--method dpo`;
* self-generated token rewards: after a short goal-conditioned SFT ("quality excellent :" or
  "quality awful :" before the prompt of demonstrations with gold above 0.3 or below −0.3;
  400 steps × 8 at lr 3e-3, the chapter's recipe made smaller and without plain-prompt copies),
  the model's contrastive token rewards r_t = log π(y_t | good ⊕ x) − log π(y_t | bad ⊕ x) are
  clearly positive on the world's positive words and negative on its negative words (gold's
  lexicon), near 0 on the rest, on two data seeds. Measured when written (mean r_t, nats;
  seeds 0, 1): positive words +0.93, +0.54; negative words −1.07, −0.65; other +0.02, −0.03.
  With 200 steps, or goals on every non-neutral demonstration, the conditioning was not
  reliably learnt on every seed (a sudden transition), so the test uses 400.
"""

from __future__ import annotations

import copy

import pytest
import torch

from alignlib.config import TrainConfig
from alignlib.data import DataError, collate_examples, load_rows, tokenize_rows
from alignlib.losses.pairwise import dpo_loss, t_reg_loss, t_reg_weights


def _toy(b=3, t=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lp = {k: -torch.rand(b, t, generator=gen) * 3 for k in ("pw", "pl", "rw", "rl")}
    mask_w = torch.ones(b, t)
    mask_l = torch.ones(b, t)
    mask_w[0, 4:] = 0  # a shorter chosen answer
    mask_l[1, 3:] = 0
    r_w, r_l = torch.randn(b, t, generator=gen), torch.randn(b, t, generator=gen)
    return lp, mask_w, mask_l, r_w, r_l


def _args(lp, mask_w, mask_l, r_w, r_l):
    return (lp["pw"], lp["pl"], lp["rw"], lp["rl"], mask_w, mask_l, r_w, r_l)


# ------------------------------------------------------------------------------------------- the loss
def test_alpha_zero_is_dpo_with_the_same_gradient():
    lp, mw, ml, rw, rl = _toy()
    lp["pw"].requires_grad_(True)
    loss, metrics = t_reg_loss(*_args(lp, mw, ml, rw, rl), beta=0.1, alpha=0.0, tau=0.7)
    (g_treg,) = torch.autograd.grad(loss, lp["pw"])
    ref, _ = dpo_loss((lp["pw"] * mw).sum(-1), (lp["pl"] * ml).sum(-1), (lp["rw"] * mw).sum(-1),
                      (lp["rl"] * ml).sum(-1), beta=0.1)
    (g_dpo,) = torch.autograd.grad(ref, lp["pw"])
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(g_treg, g_dpo)
    assert metrics["dpo_loss"] == pytest.approx(ref.item(), abs=1e-6)


@pytest.mark.parametrize("tau", [1.0, 1e9])
def test_uniform_weights_make_the_token_term_dpo(tau):
    lp, mw, ml, rw, rl = _toy(seed=1)
    if tau == 1.0:  # constant token rewards, any τ
        rw, rl = torch.full_like(rw, 0.3), torch.full_like(rl, -2.0)
    loss, metrics = t_reg_loss(*_args(lp, mw, ml, rw, rl), beta=0.5, alpha=1.0, tau=tau)
    assert metrics["t_reg/reg_loss"] == pytest.approx(metrics["dpo_loss"], rel=1e-5)
    assert loss.item() == pytest.approx(2 * metrics["dpo_loss"], rel=1e-5)


def test_weights_are_n_softmax_on_the_mask_and_constant():
    _, mw, _, rw, _ = _toy(seed=2)
    rw.requires_grad_(True)
    w = t_reg_weights(rw, mw, tau=0.5, sign=1.0)
    assert not w.requires_grad
    torch.testing.assert_close(w.sum(-1), mw.sum(-1))
    assert (w[mw == 0] == 0).all() and (w[mw == 1] > 0).all()
    expected = torch.softmax(rw[0, :4].detach() / 0.5, -1) * 4
    torch.testing.assert_close(w[0, :4], expected)
    w_rej = t_reg_weights(rw, mw, tau=0.5, sign=-1.0)  # rejected answers: weight on the low-reward tokens
    assert torch.equal(w_rej[1].argmax(), rw[1].argmin())


def test_gradient_follows_the_token_rewards():
    """L_reg pushes the chosen answer's high-r_t tokens up hardest and the rejected answer's low-r_t tokens down."""
    t = 5
    zeros = torch.zeros(1, t)
    pw, pl = zeros.clone().requires_grad_(True), zeros.clone().requires_grad_(True)
    ones = torch.ones(1, t)
    r = torch.tensor([[-1.0, 0.5, 2.0, 0.0, -0.3]])
    loss, _ = t_reg_loss(pw, pl, zeros, zeros, ones, ones, r, r, beta=0.1, alpha=1.0, tau=1.0)
    g_w, g_l = torch.autograd.grad(loss, (pw, pl))
    # descent moves log π(y_w,t) by −g: up on every token, most on the highest reward
    assert (g_w < 0).all() and (g_l > 0).all()
    assert torch.equal(torch.argsort(g_w[0]), torch.argsort(-r[0]))  # most negative gradient first = highest r first
    assert torch.equal(torch.argsort(-g_l[0]), torch.argsort(r[0]))  # largest push down first = lowest r first
    # the DPO part alone pushes every token equally
    loss0, _ = t_reg_loss(pw, pl, zeros, zeros, ones, ones, r, r, beta=0.1, alpha=0.0, tau=1.0)
    g0, _ = torch.autograd.grad(loss0, (pw, pl))
    assert torch.allclose(g0, g0[0, :1].expand_as(g0))


def test_bad_input_raises_clear_errors():
    lp, mw, ml, rw, rl = _toy()
    with pytest.raises(ValueError, match="tau"):
        t_reg_loss(*_args(lp, mw, ml, rw, rl), tau=0.0)
    with pytest.raises(ValueError, match="alpha"):
        t_reg_loss(*_args(lp, mw, ml, rw, rl), alpha=-1.0)
    with pytest.raises(ValueError, match="beta"):
        t_reg_loss(*_args(lp, mw, ml, rw, rl), beta=0.0)
    with pytest.raises(ValueError, match="chosen"):
        t_reg_loss(*_args(lp, mw, ml, rw[:, :-1], rl))
    with pytest.raises(ValueError, match="rows"):
        t_reg_loss(lp["pw"], lp["pl"][:2], lp["rw"], lp["rl"][:2], mw, ml[:2], rw, rl[:2])
    with pytest.raises(ValueError, match="t_reg_alpha"):
        TrainConfig(method="t_reg", t_reg_alpha=-0.1)
    with pytest.raises(ValueError, match="t_reg_tau"):
        TrainConfig(method="t_reg", t_reg_tau=0.0)
    with pytest.raises(ValueError, match="precompute_ref_log_probs"):
        TrainConfig(method="t_reg", precompute_ref_log_probs=True)


# ------------------------------------------------------------------------------------------- the data
def test_batch_carries_token_rewards_aligned_with_the_completion(pocket_reviews):
    _, tokenizer = pocket_reviews
    prompt, chosen, rejected = "review the pizza :", "i loved the pizza .", "the pizza was bad"
    n_w = len(tokenizer(chosen, add_special_tokens=False)["input_ids"]) + 1  # + EOS
    n_l = len(tokenizer(rejected, add_special_tokens=False)["input_ids"]) + 1
    r_w, r_l = [float(j + 1) for j in range(n_w)], [-float(j + 1) for j in range(n_l)]
    rows = load_rows([{"prompt": prompt, "chosen": chosen, "rejected": rejected, "chosen_token_rewards": r_w,
                       "rejected_token_rewards": r_l},
                      {"prompt": "review the tea :", "chosen": "good tea", "rejected": "i hated the tea",
                       "chosen_token_rewards": [0.5] * 3, "rejected_token_rewards": [0.25] * 5}], "pairs")
    examples = tokenize_rows(rows, tokenizer, "pairs")
    batch = collate_examples(examples, tokenizer.pad_token_id)
    rewards, cmask = batch["token_rewards"], batch["completion_mask"]
    assert rewards.shape == batch["input_ids"].shape
    # row 0: chosen of pair 0; row 2: rejected of pair 0 (chosen rows first, as TRL lays pairs out)
    torch.testing.assert_close(rewards[0][cmask[0].bool()], torch.tensor(r_w))
    torch.testing.assert_close(rewards[2][cmask[2].bool()], torch.tensor(r_l))
    assert (rewards[cmask == 0] == 0).all()  # prompt and padding carry no reward
    # the step reads token t at position t − 1, like sequence_logprobs' shifted mask
    assert torch.equal(rewards[:, 1:] != 0, cmask[:, 1:].bool())
    # the token whose reward is 1.0 is the first completion token, "i"
    first = int(cmask[0].nonzero()[0])
    assert tokenizer.convert_ids_to_tokens(int(batch["input_ids"][0, first])) == "i" and rewards[0, first] == 1.0


def test_bad_token_reward_columns_raise(pocket_reviews):
    _, tokenizer = pocket_reviews
    row = {"prompt": "review the tea :", "chosen": "good tea", "rejected": "i hated the tea"}
    with pytest.raises(DataError, match="rejected_token_rewards"):
        load_rows([{**row, "chosen_token_rewards": [0.0] * 3}], "pairs")
    with pytest.raises(DataError, match="finite numbers"):
        load_rows([{**row, "chosen_token_rewards": ["a"], "rejected_token_rewards": [0.0]}], "pairs")
    rows = load_rows([{**row, "chosen_token_rewards": [0.0] * 2, "rejected_token_rewards": [0.0] * 5}], "pairs")
    with pytest.raises(DataError, match="2 token rewards for a completion of 3 tokens"):
        tokenize_rows(rows, tokenizer, "pairs")


# ------------------------------------------------------------------------------ through the one loop
RECIPE = dict(world="reviews", model="pocket", learning_rate=1e-4, per_device_train_batch_size=8, beta=0.1,
              save_steps=0, progress=False, logging_steps=0, overwrite_output_dir=True, seed=0)


def test_t_reg_with_alpha_zero_trains_like_dpo(tmp_path, pocket_reviews, reviews_world):
    from alignlib.loop import train
    from alignlib.rollout import preference_pairs

    policy, tokenizer = pocket_reviews
    pairs = preference_pairs(policy, tokenizer, reviews_world, reviews_world.prompts("train")[:24], seed=0)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for r in pairs:
        n = [len(tokenizer(r[c], add_special_tokens=False)["input_ids"]) + 1 for c in ("chosen", "rejected")]
        rows.append({**{k: r[k] for k in ("prompt", "chosen", "rejected")},
                     "chosen_token_rewards": torch.randn(n[0], generator=gen).tolist(),
                     "rejected_token_rewards": torch.randn(n[1], generator=gen).tolist()})
    plain = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]
    runs = {}
    for name, method, alpha, data in (("dpo", "dpo", 1.0, plain), ("t_reg0", "t_reg", 0.0, rows),
                                      ("t_reg1", "t_reg", 1.0, rows)):
        cfg = TrainConfig(**RECIPE, method=method, t_reg_alpha=alpha, max_steps=3, output_dir=str(tmp_path / name))
        runs[name] = train(cfg, model=copy.deepcopy(policy), tokenizer=tokenizer, reference_model=policy, dataset=data)
    for (n, p0), p1, p2 in zip(runs["dpo"].model.named_parameters(), runs["t_reg0"].model.parameters(),
                               runs["t_reg1"].model.parameters()):
        torch.testing.assert_close(p1, p0, rtol=0, atol=1e-6, msg=f"α = 0 T-REG differs from DPO in {n}")
    moved = max((p2 - p0).abs().max().item() for p0, p2 in zip(runs["dpo"].model.parameters(),
                                                              runs["t_reg1"].model.parameters()))
    assert moved > 1e-5  # with α = 1 the token term changes the update
    with pytest.raises(ValueError, match="needs token rewards"):
        train(TrainConfig(**RECIPE, method="t_reg", max_steps=1, output_dir=str(tmp_path / "x")),
              model=copy.deepcopy(policy), tokenizer=tokenizer, reference_model=policy, dataset=plain)


# ----------------------------------------------------------------------- self-generated token rewards
GOOD, BAD = "quality excellent :", "quality awful :"


@pytest.mark.parametrize("seed", [0, 1])
def test_goal_conditioned_model_scores_sentiment_words(seed, tmp_path, pocket_reviews, reviews_world):
    from alignlib.diagnostics import completion_token_logprobs, contrastive_token_rewards, mean_credit_by_role
    from alignlib.loop import train
    from alignlib.rollout import preference_pairs

    policy, tokenizer = pocket_reviews
    examples = reviews_world.sft_examples(1000, seed=seed + 7)
    golds = reviews_world.gold_reward([e.prompt for e in examples], [e.completion for e in examples])
    rows = []
    rows = [{"prompt": f"{GOOD if g > 0 else BAD} {e.prompt}", "completion": e.completion}
            for e, g in zip(examples, golds) if abs(g) > 0.3]  # clearly good or bad demonstrations only
    cfg = TrainConfig(**{**RECIPE, "learning_rate": 3e-3}, method="sft", max_steps=400,
                      output_dir=str(tmp_path / "cond"))
    ref = train(cfg, model=copy.deepcopy(policy), tokenizer=tokenizer, dataset=rows).model.eval()
    pairs = preference_pairs(policy, tokenizer, reviews_world, reviews_world.prompts("train")[:96], seed=seed + 3)
    prompts = [r["prompt"] for r in pairs for _ in range(2)]
    texts = [t for r in pairs for t in (r["chosen"], r["rejected"])]
    rewards = contrastive_token_rewards(ref, tokenizer, prompts, texts, GOOD, BAD)
    ids = completion_token_logprobs(ref, tokenizer, prompts, texts)
    by_role = mean_credit_by_role(prompts, [(tokenizer.convert_ids_to_tokens(i), r) for (i, _), r in zip(ids, rewards)])
    print(f"seed {seed}: mean r_t by role", {k: round(v[0], 3) for k, v in by_role.items()})
    assert by_role["positive word"][0] > 0.2 and by_role["negative word"][0] < -0.2
    assert abs(by_role["other"][0]) < 0.1
