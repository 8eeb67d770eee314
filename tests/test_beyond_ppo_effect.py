"""Chapter 3b's claimed effects, on gold judgement, small and seeded (two seeds each)."""

from __future__ import annotations

import copy
import statistics

import pytest
import torch

from alignlib import TrainConfig, evaluate_policy, sample, train
from alignlib.averaging import interpolate_models
from alignlib.data import collate, encode_completion, encode_prompt
from alignlib.decoding import partial_text_reward, reward_guided_decode
from alignlib.lists import load_list_rows
from alignlib.logprobs import sequence_logprobs
from alignlib.rollout import prompts_for, scored_lists

SEEDS = (0, 1)
TOKENS = 24


def _config(tmp_path, **kw):
    base = dict(world="reviews", max_steps=32, save_steps=0, logging_steps=0, progress=False,
                output_dir=str(tmp_path / kw.get("method", "m")), overwrite_output_dir=True, max_new_tokens=TOKENS)
    return TrainConfig(**{**base, **kw})


def _gold(model, ref, tok, world, seed, samples=4):
    return evaluate_policy(model, ref, tok, world, samples_per_prompt=samples, max_new_tokens=TOKENS,
                           seed=seed).gold_reward


@pytest.mark.parametrize("seed", SEEDS)
def test_reward_guided_decoding_beats_sampling_and_best_of_n_at_equal_budget(pocket_reviews, reviews_world, seed):
    """DeAL-style search (8 beams × 2 expansions) against plain sampling and best-of-16 (the same sampling budget)."""
    model, tok = pocket_reviews
    prompts = reviews_world.prompts("eval") * 4
    gold = reviews_world.gold_reward
    plain = sample(model, tok, prompts, max_new_tokens=TOKENS, seed=seed)
    many = sample(model, tok, [p for p in prompts for _ in range(16)], max_new_tokens=TOKENS, seed=seed + 1)
    best_of_16 = torch.tensor(gold(many.prompts, many.texts)).view(-1, 16).max(-1).values.mean().item()
    guided = reward_guided_decode(model, tok, prompts, partial_text_reward(gold), beams=8, expansions=2,
                                  chunk_tokens=4, max_new_tokens=TOKENS, seed=seed + 2)
    assert guided.sampled_tokens <= sum(len(c) for c in many.completion_ids) * 1.1  # about the same budget
    g_plain, g_guided = statistics.fmean(gold(prompts, plain.texts)), statistics.fmean(gold(prompts, guided.texts))
    assert g_guided > g_plain + 0.5, f"seed {seed}: DeAL {g_guided:.3f} vs plain sampling {g_plain:.3f}"
    assert g_guided > best_of_16, f"seed {seed}: DeAL {g_guided:.3f} vs best-of-16 {best_of_16:.3f}"


def test_averaged_models_lie_above_the_chord(pocket_reviews, reviews_world, tmp_path):
    """Model averaging (Lin et al.): θ(½) earns more gold reward than the straight line between
    SFT and RL predicts at its alignment tax (held-out demonstration NLL)."""
    sft, tok = pocket_reviews
    demos = reviews_world.sft_examples(128, seed=12345)
    batch = collate([(encode_prompt(tok, d.prompt, None), encode_completion(tok, d.completion, None)[0])
                     for d in demos], tok.pad_token_id)

    @torch.no_grad()
    def nll(m):
        lp, _, mask = sequence_logprobs(m, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        return (-lp.sum() / mask.sum()).item()

    for seed in SEEDS:
        cfg = _config(tmp_path, method="grpo", seed=seed, learning_rate=1e-3, beta=0.0,
                      per_device_train_batch_size=4, samples_per_prompt=4)
        rl = train(cfg, model=copy.deepcopy(sft).train(), tokenizer=tok).model
        points = {a: interpolate_models(sft, rl, a) for a in (0.0, 0.5, 1.0)}
        tax = {a: nll(m) for a, m in points.items()}
        gold = {a: _gold(m, sft, tok, reviews_world, seed + 100) for a, m in points.items()}
        assert tax[1.0] > tax[0.0] + 0.2, f"seed {seed}: RL paid no alignment tax ({tax})"
        chord = gold[0.0] + (gold[1.0] - gold[0.0]) * (tax[0.5] - tax[0.0]) / (tax[1.0] - tax[0.0])
        assert gold[0.5] > chord + 0.1, f"seed {seed}: θ(½) at gold {gold[0.5]:.3f}, chord {chord:.3f} ({tax})"


def test_a_lol_beats_sft_on_the_same_scored_data(pocket_reviews, reviews_world, tmp_path):
    sft, tok = pocket_reviews
    for seed in SEEDS:
        rows = scored_lists(sft, tok, reviews_world, prompts_for(reviews_world, 128), 4, seed=seed,
                            max_new_tokens=TOKENS)
        rows, _ = load_list_rows(rows, on_bad="skip")
        flat = [{"prompt": r["prompt"], "completion": c} for r in rows for c in r["completions"]]
        common = dict(seed=seed, learning_rate=3e-4, max_steps=48)
        alol = train(_config(tmp_path, method="a_lol", per_device_train_batch_size=8, samples_per_prompt=4, **common),
                     model=copy.deepcopy(sft).train(), tokenizer=tok, dataset=rows)
        plain = train(_config(tmp_path, method="sft", per_device_train_batch_size=32, **common),
                      model=copy.deepcopy(sft).train(), tokenizer=tok, dataset=flat)
        g_alol = _gold(alol.model, sft, tok, reviews_world, seed + 100, samples=8)
        g_sft = _gold(plain.model, sft, tok, reviews_world, seed + 100, samples=8)
        assert g_alol > g_sft + 0.1, f"seed {seed}: A-LoL {g_alol:.3f} vs SFT on the same data {g_sft:.3f}"
