"""Decoding-time alignment: reward-guided search over chunks of sampled tokens (DeAL-style).

DeAL (Huang et al.) treats decoding as a search problem: states are partial
completions, an action appends text, and an alignment reward R_a scores the
states. Our version is a beam search whose moves are *sampled chunks*:

    keep B partial completions (beams);
    for each beam, sample E continuations of k tokens from π;
    score every candidate partial text with R_a;            (eq-deal-select)
    keep the B best candidates per prompt; finished ones compete unchanged;
    stop when every beam has ended (EOS) or max_new_tokens is reached.

Sampling budget: at most B·E·max_new_tokens sampled tokens per prompt, the
budget of best-of-(B·E) sampling, so the two are compared at equal cost. With
B = E = 1 the search is plain sampling (no choice is ever made).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .data import encode_prompt
from .rollout import cut_at_eos, left_pad

RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


@dataclass
class Decoded:
    """Result of `reward_guided_decode`; row i answers prompts[i]."""

    prompts: list[str]
    texts: list[str]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    scores: list[float]  # R_a of the returned completion
    sampled_tokens: int  # tokens sampled from π in total (the search's cost)


def select_beams(scores: torch.Tensor, owner: torch.Tensor, beams: int) -> list[int]:
    """Return the indices of the `beams` highest-scored candidates of each owner (prompt), best first.

    scores, owner: [N] (the candidate's R_a and the index of its prompt). This is the
    selection step (eq-deal-select): within each prompt, argmax-B of R_a;
    ties go to the earlier candidate, so the search is deterministic given the samples.
    """
    if scores.shape != owner.shape or scores.dim() != 1:
        raise ValueError(f"scores and owner must be 1-D of the same length, got {tuple(scores.shape)} and "
                         f"{tuple(owner.shape)}")
    if beams < 1:
        raise ValueError(f"beams must be ≥ 1, got {beams}")
    if not torch.isfinite(scores).all():
        raise ValueError("the alignment reward returned NaN or inf for some candidate; it must be finite")
    keep = []
    for o in owner.unique(sorted=True).tolist():
        idx = (owner == o).nonzero().squeeze(1)
        # a stable sort on −score keeps the earlier of equal candidates first
        order = torch.sort(-scores[idx], stable=True).indices
        keep += idx[order[:beams]].tolist()
    return keep


def complete_sentences(text: str, end_marks: Sequence[str] = (".", "!")) -> str:
    """Return `text` up to and including its last sentence end mark ("" if it has none).

    Use it to score a partial completion by the sentences it has finished, so
    that a sentence cut at a chunk boundary is not judged as a broken one.
    """
    words = text.split()
    last = max((i for i, w in enumerate(words) if w in end_marks), default=-1)
    return " ".join(words[: last + 1])


def partial_text_reward(reward_fn: RewardFn, end_marks: Sequence[str] = (".", "!")) -> RewardFn:
    """Return R_a that scores only the finished sentences of a text (see `complete_sentences`)."""

    def scored(prompts: Sequence[str], texts: Sequence[str]) -> list[float]:
        return list(reward_fn(prompts, [complete_sentences(t, end_marks) for t in texts]))

    return scored


def _check_scores(scores, n: int) -> torch.Tensor:
    out = torch.as_tensor(list(scores), dtype=torch.float32)
    if out.shape != (n,):
        raise ValueError(f"the alignment reward must return one score per text: expected {n}, got {tuple(out.shape)}")
    return out


@torch.no_grad()
def reward_guided_decode(
    model,
    tokenizer,
    prompts: Sequence[str],
    reward_fn: RewardFn,
    beams: int = 2,
    expansions: int = 4,
    chunk_tokens: int = 4,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    seed: int | None = None,
) -> Decoded:
    """Return one completion per prompt found by reward-guided chunked beam search (module docstring).

    reward_fn(prompts, texts) -> scores is R_a: the gold reward, a reward model, or any
    programmatic constraint; it scores partial texts during the search and the final texts.
    The first chunk samples B·E continuations of the empty completion, every later one E per beam.
    """
    for name, value in (("beams", beams), ("expansions", expansions), ("chunk_tokens", chunk_tokens),
                        ("max_new_tokens", max_new_tokens)):
        if value < 1:
            raise ValueError(f"{name} must be ≥ 1, got {value}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompts = list(prompts)
    prompt_ids = [encode_prompt(tokenizer, p, None) for p in prompts]
    # state: per prompt, a list of (completion ids, finished)
    state: list[list[tuple[list[int], bool]]] = [[([], False)] for _ in prompts]
    best_scores = [0.0] * len(prompts)
    sampled = 0
    for _ in range(0, max_new_tokens, chunk_tokens):
        rows, owners, parents = [], [], []
        for i, beams_i in enumerate(state):
            for ids, done in beams_i:
                if done:
                    continue
                copies = beams * expansions if len(ids) == 0 and len(beams_i) == 1 else expansions
                for _ in range(copies):
                    rows.append(prompt_ids[i] + ids)
                    owners.append(i)
                    parents.append(ids)
        if not rows:
            break
        input_ids, attention = left_pad(rows, pad)
        room = min(chunk_tokens, max_new_tokens - min(len(p) for p in parents))
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), do_sample=True,
                             temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=room,
                             eos_token_id=eos, pad_token_id=pad)
        chunks = cut_at_eos(out[:, input_ids.shape[1]:].tolist(), eos)
        candidates: list[tuple[int, list[int], bool]] = []
        for owner, parent, chunk in zip(owners, parents, chunks):
            sampled += len(chunk)
            ids = (parent + chunk)[:max_new_tokens]
            candidates.append((owner, ids, (eos in chunk) or len(ids) >= max_new_tokens))
        for i, beams_i in enumerate(state):  # finished beams compete unchanged
            candidates += [(i, ids, True) for ids, done in beams_i if done]
        texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for _, ids, _ in candidates]
        scores = _check_scores(reward_fn([prompts[o] for o, _, _ in candidates], texts), len(candidates))
        keep = select_beams(scores, torch.tensor([o for o, _, _ in candidates]), beams)
        state = [[] for _ in prompts]
        for j in keep:
            owner, ids, done = candidates[j]
            if not state[owner]:
                best_scores[owner] = scores[j].item()
            state[owner].append((ids, done))
        if all(done for beams_i in state for _, done in beams_i):
            break
    completion_ids = [beams_i[0][0] for beams_i in state]
    texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in completion_ids]
    if was_training:
        model.train()
    return Decoded(prompts, texts, prompt_ids, completion_ids, best_scores, sampled)


def _continue(model, rows: list[list[int]], max_new_tokens: int, eos: int, pad: int) -> list[list[int]]:
    """Return pure-sampled continuations (cut after EOS) of the id rows `rows`."""
    device = next(model.parameters()).device
    input_ids, attention = left_pad(rows, pad)
    out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), do_sample=True,
                         temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, eos_token_id=eos,
                         pad_token_id=pad)
    return cut_at_eos(out[:, input_ids.shape[1]:].tolist(), eos)


@torch.no_grad()
def roll_in_roll_out(guide, learner, tokenizer, prompts: Sequence[str], switch_at: int, max_new_tokens: int = 32,
                     seed: int | None = None) -> Decoded:
    """Return completions whose first `switch_at` tokens are sampled from `guide` (roll-in), the rest from `learner`.

    The sampling scheme behind RLGF (Chang et al.): a guide policy puts the learner in
    states it would rarely reach alone; the learner's roll-out from there is what RL
    then scores. switch_at = 0 is the learner alone, switch_at ≥ max_new_tokens the guide
    alone. A roll-in that ends (EOS) before `switch_at` is returned as it is.
    """
    if not 0 <= switch_at:
        raise ValueError(f"switch_at must be ≥ 0, got {switch_at}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}")
    if seed is not None:
        torch.manual_seed(seed)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompts = list(prompts)
    prompt_ids = [encode_prompt(tokenizer, p, None) for p in prompts]
    modes = [(m, m.training) for m in (guide, learner)]
    for m, _ in modes:
        m.eval()
    head = min(switch_at, max_new_tokens)
    prefix = _continue(guide, prompt_ids, head, eos, pad) if head > 0 else [[] for _ in prompts]
    open_rows = [i for i, ids in enumerate(prefix) if eos not in ids]
    completion_ids = [list(ids) for ids in prefix]
    if open_rows and max_new_tokens - head > 0:
        tails = _continue(learner, [prompt_ids[i] + prefix[i] for i in open_rows], max_new_tokens - head, eos, pad)
        for i, tail in zip(open_rows, tails):
            completion_ids[i] = prefix[i] + tail
    for m, training in modes:
        m.train(training)
    texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in completion_ids]
    sampled = sum(len(c) for c in completion_ids)
    return Decoded(prompts, texts, prompt_ids, completion_ids, [float("nan")] * len(prompts), sampled)


__all__ = ["Decoded", "select_beams", "complete_sentences", "partial_text_reward", "reward_guided_decode",
           "roll_in_roll_out"]
