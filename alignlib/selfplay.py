"""Self-play in the one loop: batch sources and steps of Nash-MD, SPPO, DNO and INPO, and the outer iteration.

These methods need no reward: they ask the world's general preference oracle
P(y ≻ y' | x) (`world.preference_probability`) about samples of the current policy.
Each is a batch source (a subclass of `alignlib.online._OnlineSource`, registered in
`alignlib.methods.METHODS` through `Method.source`) plus a step that applies a pure
loss of `alignlib.losses.nash`:

    nash_md  NashMDPairs     y ~ π_θ, y' ~ the token-level geometric mixture of π_θ and π_ref
                             (`sample_mixture`), p = P(y ≻ y'); policy-gradient loss.
    sppo     WinRateGroups   k samples per prompt, P̂(y ≻ π) against the group; squared loss
                             of log π/π_t towards η(P̂ − ½) on every sample.
    dno      WinRateGroups   the best and worst of the k samples by P̂; DNO's soft-label
                             contrastive loss against π_t, pairs below a win-rate margin dropped.
    inpo     InpoPairs       two samples per prompt labelled by a draw from P; INPO's squared
                             loss with the prox centre π_t^{1−τη} π_ref^{τη}.

SPPO, DNO and INPO are *iterative*: their reference is the previous iterate π_t.
`iterate` is the outer loop: it calls `alignlib.train` once per iteration with
`reference_model=` a frozen copy of the last iterate (it is not a trainer; the one
loop does every optimizer step). Nash-MD keeps the fixed π_ref and needs one `train`.

Sampling is seeded by (seed, step, micro-step, process) as in `alignlib.online`, so a
resumed run draws exactly the samples an uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .data import encode_prompt, render_prompts
from .logprobs import sequence_logprobs
from .losses.nash import (
    dno_loss,
    geometric_mixture_logits,
    inpo_loss,
    nash_md_policy_gradient_loss,
    sppo_group_loss,
)
from .nash_games import check_probabilities, group_win_rates
from .online import OnlinePairs, _OnlineSource, judge_by_oracle, sampling_seed
from .rollout import Samples, cut_at_eos, left_pad, sample


# ------------------------------------------------------------------ sampling from the geometric mixture
class _MixtureLogits:
    """A `transformers` logits processor: replaces the policy's next-token logits by the mixture's log-probs."""

    def __init__(self, reference: torch.nn.Module, prompt_mask: torch.Tensor, coef: float):
        self.reference, self.prompt_mask, self.coef = reference, prompt_mask, coef

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids.shape[1] - self.prompt_mask.shape[1]
        mask = torch.cat([self.prompt_mask, self.prompt_mask.new_ones(len(input_ids), generated)], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions as `generate` gives the policy
        ref_logits = self.reference(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits[:, -1]
        return geometric_mixture_logits(scores, ref_logits.to(scores.dtype), self.coef)


@torch.no_grad()
def sample_mixture(policy, reference, tokenizer, prompts: Sequence[str], mixture_coef: float,
                   max_new_tokens: int = 32, temperature: float = 1.0, seed: int | None = None,
                   batch_size: int = 256) -> Samples:
    """Return one completion per prompt sampled token by token from the geometric mixture of policy and reference.

    At every position the next token is drawn from log_softmax((1 − c)·z_θ + c·z_ref)
    (`geometric_mixture_logits`, c = `mixture_coef`): Nash-MD's opponent π_θ^{1−c} π_ref^{c}
    taken per token, as in the Nash-MD-PG algorithm. c = 0 draws exactly what
    `rollout.sample` draws from the policy with the same seed; c = 1 samples the reference.
    The reference is re-run on the whole prefix at each step (no KV cache: small models only).
    """
    from transformers import LogitsProcessorList

    if not 0.0 <= mixture_coef <= 1.0:
        raise ValueError(f"mixture_coef must be in [0, 1], got {mixture_coef}")
    if reference is None:
        raise ValueError("sampling the geometric mixture needs a separate reference model (not --lora's adapters-off "
                         "base, which would switch off the policy too); train all weights for nash_md")
    prompts = render_prompts(tokenizer, prompts)  # lists of messages → chat-template text, once
    if seed is not None:
        torch.manual_seed(seed)
    was_training, ref_training = policy.training, reference.training
    policy.eval()
    reference.eval()
    device = next(policy.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompt_ids = [encode_prompt(tokenizer, p, None) for p in prompts]
    completion_ids: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompt_ids[start: start + batch_size]
        input_ids, attention = left_pad(chunk, pad)  # as `rollout.sample`
        attention = attention.to(device)
        out = policy.generate(input_ids=input_ids.to(device), attention_mask=attention, do_sample=True,
                              temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                              eos_token_id=eos, pad_token_id=pad,
                              logits_processor=LogitsProcessorList([_MixtureLogits(reference, attention,
                                                                                   mixture_coef)]))
        completion_ids += cut_at_eos(out[:, input_ids.shape[1]:].tolist(), eos)
    texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in completion_ids]
    if was_training:
        policy.train()
    if ref_training:
        reference.train()
    return Samples(list(prompts), texts, prompt_ids, completion_ids)


def _preference(world) -> Callable:
    """Return the world's P(a ≻ b | x) with a check that every value is a probability."""

    def probability(prompts, a, b):
        return check_probabilities(world.preference_probability(list(prompts), list(a), list(b)),
                                   f"{world.name} world's preference_probability").tolist()

    return probability


# ------------------------------------------------------------------ batch sources
class NashMDPairs(_OnlineSource):
    """One sample y ~ π_θ per prompt and its judge probability p = P(y ≻ y') against y' ~ the geometric mixture.

    Rows: the B policy samples (prompt + completion); `probabilities` [B]. The mixture
    samples are only judged, never trained on.
    """

    def __init__(self, *args, reference: torch.nn.Module, preference: Callable, mixture_coef: float, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0.0 <= mixture_coef <= 1.0:
            raise ValueError(f"mixture_coef must be in [0, 1], got {mixture_coef}")
        self.reference, self.preference, self.mixture_coef = reference, preference, mixture_coef

    def micro_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        prompts = self.step_prompts(step, micro, rank)
        mine = self._sample(prompts, step, micro, rank)
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        seed = sampling_seed(self.seed, step, micro, rank) + 1
        with torch.random.fork_rng(devices=devices):
            if self.mixture_coef == 0:  # the mixture is the policy: the same draws, without the reference's passes
                opponent = sample(self.policy(), self.tokenizer, prompts, max_new_tokens=self.max_new_tokens,
                                  temperature=self.temperature, seed=seed)
            else:
                opponent = sample_mixture(self.policy(), self.reference, self.tokenizer, prompts, self.mixture_coef,
                                          max_new_tokens=self.max_new_tokens, temperature=self.temperature, seed=seed)
        probs = torch.tensor(self.preference(prompts, mine.texts, opponent.texts), dtype=torch.float32)
        return self._tensors(list(zip(mine.prompt_ids, mine.completion_ids)), probabilities=probs)


class WinRateGroups(_OnlineSource):
    """k samples per prompt (prompt-major rows) and each one's win rate P̂(y ≻ π) against the group.

    `win_rates` [B·k]: P̂(y_i ≻ π) = (1/k) Σ_j P(y_i ≻ y_j | x), the sample itself included
    (SPPO's estimator, `nash_games.group_win_rates`); k² judge calls per prompt.
    """

    def __init__(self, *args, preference: Callable, samples_per_prompt: int, **kwargs):
        super().__init__(*args, **kwargs)
        if samples_per_prompt < 2:
            raise ValueError(f"win rates against the group need samples_per_prompt ≥ 2, got {samples_per_prompt}")
        self.preference, self.k = preference, samples_per_prompt

    def micro_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        prompts = self.step_prompts(step, micro, rank)
        s = self._sample([p for p in prompts for _ in range(self.k)], step, micro, rank)
        rates = group_win_rates(self.preference, prompts, s.texts, self.k)
        return self._tensors(list(zip(s.prompt_ids, s.completion_ids)),
                             win_rates=torch.tensor(rates.reshape(-1), dtype=torch.float32))


class InpoPairs(OnlinePairs):
    """Two samples per prompt, ordered by a draw from the preference oracle (B chosen rows, then B rejected).

    With an `anchor` model (the fixed π_ref, when the loop's reference is the previous
    iterate π_t) the batch also carries `anchor_logps` [2B], the sequence log-probs under it.
    """

    def __init__(self, *args, anchor: torch.nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.anchor = anchor

    def micro_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        batch = super().micro_batch(step, micro, rank)
        if self.anchor is not None:
            with torch.no_grad():
                batch["anchor_logps"] = sequence_logprobs(self.anchor, batch["input_ids"], batch["attention_mask"],
                                                          batch["completion_mask"])[0]
        return batch


# ------------------------------------------------------------------ source factories (Method.source)
def _world(ctx):
    from .worlds import get_world
    from .worlds.base import ChatPromptJudge

    return ChatPromptJudge(get_world(ctx.config.world))  # its judgement reads rendered chat prompts too


def nash_md_source(ctx) -> NashMDPairs:
    return NashMDPairs(ctx.policy, ctx.tokenizer, ctx.prompts, reference=ctx.reference.model,
                       preference=_preference(_world(ctx)), mixture_coef=ctx.config.mixture_coef, **ctx.common())


def win_rate_source(ctx) -> WinRateGroups:
    return WinRateGroups(ctx.policy, ctx.tokenizer, ctx.prompts, preference=_preference(_world(ctx)),
                         samples_per_prompt=ctx.config.samples_per_prompt, **ctx.common())


_ANCHORS: dict[tuple[str, str], torch.nn.Module] = {}


def load_anchor(name: str, world: str) -> torch.nn.Module:
    """Return the frozen model `name` (as --model: 'pocket', a hub id or a folder), loaded once per process."""
    from .models import frozen_copy, load_tokenizer_and_model

    key = (name, world)
    if key not in _ANCHORS:
        model, _ = load_tokenizer_and_model(name, world)
        _ANCHORS[key] = frozen_copy(model)
    return _ANCHORS[key]


def inpo_source(ctx) -> InpoPairs:
    c = ctx.config
    anchor = None
    if c.anchor_model is not None:
        anchor = load_anchor(c.anchor_model, c.world).to(ctx.device)
    return InpoPairs(ctx.policy, ctx.tokenizer, ctx.prompts, judge=judge_by_oracle(_world(ctx), c.label_noise),
                     anchor=anchor, **ctx.common())


# ------------------------------------------------------------------ steps (losses on a batch)
def _logps_with_reference(ctx, batch):
    logps, token_lp, mask = sequence_logprobs(ctx.model, batch["input_ids"], batch["attention_mask"],
                                              batch["completion_mask"])
    with torch.no_grad(), ctx.reference.context(ctx.model) as ref:
        ref_logps, ref_token_lp, _ = sequence_logprobs(ref, batch["input_ids"], batch["attention_mask"],
                                                       batch["completion_mask"])
    return logps, token_lp, mask, ref_logps, ref_token_lp


def nash_md_step(ctx, batch):
    """Nash-MD-PG on policy samples judged against mixture samples (`nash_md_policy_gradient_loss`, β = config.beta)."""
    _, token_lp, mask, _, ref_token_lp = _logps_with_reference(ctx, batch)
    loss, metrics = nash_md_policy_gradient_loss(token_lp, ref_token_lp, mask, batch["probabilities"],
                                                 beta=ctx.config.beta)
    return loss, {"loss": loss.item(), **metrics}


def sppo_step(ctx, batch):
    """SPPO on every one of the k samples: (ρ − η(P̂ − ½))², ρ against the reference (the previous iterate)."""
    logps, _, _, ref_logps, _ = _logps_with_reference(ctx, batch)
    loss, metrics = sppo_group_loss(logps, ref_logps, batch["win_rates"], eta=ctx.config.eta)
    return loss, {"loss": loss.item(), **metrics}


def best_and_worst(win_rates: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return row indices [B] of the highest and the lowest win rate in each prompt-major group of k (first on ties)."""
    if win_rates.dim() != 1 or win_rates.numel() % k:
        raise ValueError(f"win_rates must be a flat prompt-major [B·k] tensor with k = {k}, got {tuple(win_rates.shape)}")
    groups = win_rates.view(-1, k)
    offset = torch.arange(len(groups), device=win_rates.device) * k
    return offset + groups.argmax(-1), offset + groups.argmin(-1)


def dno_step(ctx, batch):
    """DNO: best vs worst of each group, soft labels σ(r_w − r_l), pairs with r_w − r_l < config.dno_margin dropped."""
    logps, _, _, ref_logps, _ = _logps_with_reference(ctx, batch)
    w, l = best_and_worst(batch["win_rates"], ctx.config.samples_per_prompt)
    rates = batch["win_rates"]
    loss, metrics = dno_loss(logps[w], logps[l], ref_logps[w], ref_logps[l], beta=ctx.config.beta,
                             chosen_win_rates=rates[w], rejected_win_rates=rates[l], margin=ctx.config.dno_margin)
    return loss, {"loss": loss.item(), **metrics}


def inpo_step(ctx, batch):
    """INPO on oracle-labelled pairs; the loop's reference is π_t, `anchor_logps` (if any) the fixed π_ref."""
    logps, _, _, ref_logps, _ = _logps_with_reference(ctx, batch)
    b = len(logps) // 2
    anchor = batch.get("anchor_logps", ref_logps)
    loss, metrics = inpo_loss(logps[:b], logps[b:], anchor[:b], anchor[b:], prev_chosen_logps=ref_logps[:b],
                              prev_rejected_logps=ref_logps[b:], eta=ctx.config.eta, tau=ctx.config.tau)
    return loss, {"loss": loss.item(), **metrics}


# ------------------------------------------------------------------ the outer iteration
ITERATIVE = ("sppo", "dno", "inpo")


def iterate(config, model=None, tokenizer=None, iterations: int | None = None, dataset=None,
            callback: Callable | None = None) -> list:
    """Run `iterations` rounds of `alignlib.train`, each with the previous iterate as its reference; return the results.

    Round t trains π_{t+1} from π_t with `reference_model` = a frozen copy of π_t, in
    `<output_dir>/iter-<t>` with seed `config.seed + 1000·t` (fresh samples each round).
    Every round resumes from its own checkpoints, so an interrupted `iterate` continues
    where it stopped. For INPO the fixed π_ref of the prox term is `config.anchor_model`,
    set here to the initial model (saved to `<output_dir>/anchor`). `callback(t, result)`
    is called after each round (e.g. to evaluate). Default `iterations`: `config.selfplay_iterations`.
    """
    from .loop import train
    from .models import frozen_copy, load_tokenizer_and_model

    iterations = config.selfplay_iterations if iterations is None else iterations
    if iterations < 1:
        raise ValueError(f"iterations must be ≥ 1, got {iterations}")
    if config.lora:
        raise ValueError("iterate() resets the reference to the previous iterate, which --lora's adapters-off base "
                         "cannot be; train all weights")
    if model is None:
        model, tokenizer = load_tokenizer_and_model(config.model, config.world)
    elif tokenizer is None:
        raise ValueError("pass the tokenizer together with an in-memory model")
    root = Path(config.output_dir)
    if config.method == "inpo" and config.anchor_model is None:
        anchor = root / "anchor"  # written afresh: a stale anchor of another initial model must not be reused
        model.save_pretrained(anchor)
        tokenizer.save_pretrained(anchor)
        _ANCHORS.pop((str(anchor), config.world), None)
        config = dataclasses.replace(config, anchor_model=str(anchor))
    results = []
    for t in range(iterations):
        round_config = dataclasses.replace(config, output_dir=str(root / f"iter-{t}"), seed=config.seed + 1000 * t)
        result = train(round_config, model=model, tokenizer=tokenizer, reference_model=frozen_copy(model),
                       dataset=dataset)
        model = result.model
        model.train()
        results.append(result)
        if callback is not None:
            callback(t, result)
    model.eval()
    return results
