"""Sampling from a policy: completions with their token ids, best-of-n.

Sampling settings are explicit and default to *pure* sampling (temperature 1,
no top-k, no top-p): only then are the samples drawn from π itself, which the
KL estimate and every on-policy method assume. Truncated sampling makes the
Monte-Carlo KL biased (and famously negative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .data import encode_prompt, render_prompts


@dataclass
class Samples:
    """Completions for a list of prompts; row i answers prompts[i]."""

    prompts: list[str]
    texts: list[str]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]  # ends with EOS unless the sample hit max_new_tokens


@torch.no_grad()
def left_pad(prompt_ids: Sequence[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (input_ids, attention_mask) [N, max length] with the prompts left-padded, for batched generation."""
    width = max(len(p) for p in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        input_ids[i, width - len(p):] = torch.tensor(p)
        attention[i, width - len(p):] = 1
    return input_ids, attention


def cut_at_eos(rows: list[list[int]], eos_token_id: int) -> list[list[int]]:
    """Return each generated row up to and including its first EOS (all of it if there is none)."""
    out = []
    for row in rows:
        end = row.index(eos_token_id) + 1 if eos_token_id in row else len(row)
        out.append(row[:end])
    return out


def sample(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    batch_size: int = 256,
) -> Samples:
    """Return one sampled completion per prompt (repeat a prompt to get several).

    Prompts are left-padded for batched generation; the KV cache is on. Prompts rendered by
    a chat template (`alignlib.data.RenderedPrompt`, from `render_prompts`) are encoded
    without the tokenizer's special tokens: the template wrote BOS already.
    """
    prompts = render_prompts(tokenizer, prompts)  # lists of messages → chat-template text, once
    if seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompt_ids = [encode_prompt(tokenizer, p, None) for p in prompts]
    completion_ids: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompt_ids[start : start + batch_size]
        input_ids, attention = left_pad(chunk, pad)
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            do_sample=True,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
        )
        completion_ids += cut_at_eos(out[:, input_ids.shape[1]:].tolist(), eos)
    texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in completion_ids]
    if was_training:
        model.train()
    return Samples(list(prompts), texts, prompt_ids, completion_ids)


def best_of_n(
    model,
    tokenizer,
    prompts: Sequence[str],
    n: int,
    reward_fn: Callable[[Sequence[str], Sequence[str]], Sequence[float]],
    seed: int | None = None,
    **sample_kwargs,
) -> list[str]:
    """Return, for each prompt, the highest-reward of `n` samples (ties: the first).

    `reward_fn(prompts, responses)` may be a world's `gold_reward` or any
    learned or programmatic reward. Best-of-n is the simplest alignment lever:
    no training, only a reward and n times the sampling cost.
    """
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    repeated = [p for p in prompts for _ in range(n)]
    s = sample(model, tokenizer, repeated, seed=seed, **sample_kwargs)
    rewards = list(reward_fn(repeated, s.texts))
    best = []
    for i in range(len(prompts)):
        block = rewards[i * n : (i + 1) * n]
        j = max(range(n), key=lambda k: block[k])
        best.append(s.texts[i * n + j])
    return best


def preference_pairs(
    model,
    tokenizer,
    world,
    prompts: Sequence[str],
    seed: int,
    label_noise: float = 0.0,
    max_new_tokens: int = 32,
) -> list[dict]:
    """Return preference rows {prompt, chosen, rejected, chosen_gold, rejected_gold} labelled by the gold oracle.

    Two completions are sampled from `model` for every prompt; the world's
    oracle draws which one is preferred (Bradley–Terry on gold reward, flipped
    with probability `label_noise`). Pairs whose two texts are identical carry
    no preference signal and are dropped.
    """
    doubled = [p for p in prompts for _ in range(2)]
    s = sample(model, tokenizer, doubled, max_new_tokens=max_new_tokens, seed=seed)
    a, b = s.texts[0::2], s.texts[1::2]
    prompts = list(prompts)
    labels = world.prefer(prompts, a, b, seed=seed + 1, label_noise=label_noise)
    gold_a, gold_b = world.gold_reward(prompts, a), world.gold_reward(prompts, b)
    rows = []
    for p, ya, yb, ga, gb, a_wins in zip(prompts, a, b, gold_a, gold_b, labels):
        if ya == yb or not ya or not yb:
            continue
        if a_wins:
            rows.append({"prompt": p, "chosen": ya, "rejected": yb, "chosen_gold": ga, "rejected_gold": gb})
        else:
            rows.append({"prompt": p, "chosen": yb, "rejected": ya, "chosen_gold": gb, "rejected_gold": ga})
    return rows


def world_dataset(config, kind: str, model, tokenizer) -> list[dict]:
    """Return rows of `kind` generated from `config.world`: demonstrations ("sft"), oracle-labelled pairs
    ("pairs"), or lists of `config.samples_per_prompt` sampled completions scored by gold reward ("lists")."""
    from .worlds import get_world

    world = get_world(config.world)
    if kind == "sft":
        return [{"prompt": ex.prompt, "completion": ex.completion}
                for ex in world.sft_examples(config.num_examples, seed=config.seed)]
    if kind == "pairs":
        prompts = prompts_for(world, config.num_examples)
        return preference_pairs(model, tokenizer, world, prompts, seed=config.seed, label_noise=config.label_noise,
                                max_new_tokens=config.max_new_tokens)
    if kind == "lists":
        return scored_lists(model, tokenizer, world, prompts_for(world, config.num_examples), config.samples_per_prompt,
                            seed=config.seed, max_new_tokens=config.max_new_tokens)
    raise ValueError(f"no generated data of kind {kind!r}")


def prompts_for(world, count: int) -> list[str]:
    """Return `count` train prompts of `world`, cycling through them in order."""
    train_prompts = world.prompts("train")
    return [train_prompts[i % len(train_prompts)] for i in range(count)]


def scored_lists(model, tokenizer, world, prompts: Sequence[str], k: int, seed: int,
                 max_new_tokens: int = 32) -> list[dict]:
    """Return list rows {prompt, completions (k sampled from `model`), scores (gold reward)} for each prompt."""
    repeated = [p for p in prompts for _ in range(k)]
    s = sample(model, tokenizer, repeated, max_new_tokens=max_new_tokens, seed=seed)
    gold = world.gold_reward(repeated, s.texts)
    return [{"prompt": p, "completions": s.texts[i * k:(i + 1) * k], "scores": gold[i * k:(i + 1) * k]}
            for i, p in enumerate(prompts)]


def best_of_n_kl(n: int) -> float:
    """Return the analytic KL(π_bon ‖ π_ref) = log n − (n − 1)/n of best-of-n (eq-bon-kl).

    Exact when the n samples' rewards are distinct almost surely (continuous
    reward); an upper bound otherwise (Beirami et al. 2024). In nats.
    """
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    return math.log(n) - (n - 1) / n
