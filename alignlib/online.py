"""Online batch sources: micro-batches sampled from the *current* policy, then scored or judged.

The loop (`alignlib.loop`) asks a batch source for micro-batches and never
looks inside (`alignlib.batches`). These sources sample completions from the
policy being trained, inside `micro_batch`, so every optimizer step sees
fresh on-policy data:

    OnlineGroups   k completions per prompt, each scored by a reward function;
                   rows are prompt-major (the k samples of a prompt are
                   contiguous), with a `scores` tensor [B·k]. RLOO, GRPO, RAFT.
    OnlinePairs    2 completions per prompt, ordered by a judge (the world's
                   gold preference oracle, or a reward function); rows are
                   B chosen then B rejected, the layout of offline pairs, so
                   online DPO is the offline DPO step on this source.
    OnlineLists    K distinct completions per prompt, scored by a reward function;
                   rows completion-major with `scores` [B, K], the layout of
                   offline lists, so online listwise is the listwise step on it.

Prompts may be text or, as in TRL's conversational prompt-only format, lists of
{"role", "content"} messages: these are rendered once by the tokenizer's chat template
(`alignlib.data.render_prompts`), sampled from without a second BOS, and reward
functions and judges receive the rendered prompt text.

Sampling is pure (temperature 1 unless set, no top-k/top-p; see
`alignlib.rollout`) and seeded by (seed, step, micro-step, process), so a run
resumed from a checkpoint draws exactly the samples an uninterrupted run would
have drawn (the weights are restored first). One optimizer step is taken per
sampled batch: the samples are exactly on-policy, and importance ratios are 1.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .batches import IndexStream
from .data import collate, render_prompts
from .rollout import sample

RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


def sampling_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """Return the seed of one micro-batch's sampling: distinct for every (seed, step, micro, rank)."""
    return (((seed * 1_000_003 + step) * 1_009 + micro) * 257 + rank) % (2**63 - 1)


class _OnlineSource:
    """Shared part: which prompts a micro-batch answers, and seeded sampling from the current policy."""

    def __init__(self, policy: Callable[[], torch.nn.Module], tokenizer, prompts: Sequence[str], per_device: int,
                 accumulation: int, world_size: int, seed: int, device=None, max_new_tokens: int = 32,
                 temperature: float = 1.0):
        if not prompts:
            raise ValueError("an online method needs prompts; the world or --dataset gave none")
        # lists of messages are rendered here once by the chat template (already rendered text passes through)
        self.policy, self.tokenizer, self.prompts = policy, tokenizer, render_prompts(tokenizer, prompts)
        self.per_device, self.accumulation, self.world_size = per_device, accumulation, world_size
        self.seed, self.device = seed, device
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.stream = IndexStream(len(self.prompts), seed)

    def step_prompts(self, step: int, micro: int, rank: int) -> list[str]:
        global_batch = self.per_device * self.world_size * self.accumulation
        start = step * global_batch + (micro * self.world_size + rank) * self.per_device
        return [self.prompts[i] for i in self.stream.take(start, self.per_device)]

    def _sample(self, prompts: list[str], step: int, micro: int, rank: int):
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):  # the loop's own RNG stream is left untouched
            return sample(self.policy(), self.tokenizer, prompts, max_new_tokens=self.max_new_tokens,
                          temperature=self.temperature, seed=sampling_seed(self.seed, step, micro, rank))

    def _tensors(self, rows, **extra) -> dict[str, torch.Tensor]:
        batch = collate(rows, self.tokenizer.pad_token_id)
        batch.update(extra)
        return {k: v.to(self.device) for k, v in batch.items()}

    def tokens_per_micro_batch(self, step: int) -> None:
        """None: online losses normalise per sequence or per micro-batch (token counts are known only after sampling)."""
        return None


class OnlineGroups(_OnlineSource):
    """k completions per prompt from the current policy, scored by `reward_fn(prompts, responses)`."""

    def __init__(self, *args, reward_fn: RewardFn, samples_per_prompt: int, **kwargs):
        super().__init__(*args, **kwargs)
        if samples_per_prompt < 2:
            raise ValueError(f"group methods compare samples of one prompt: samples_per_prompt must be ≥ 2, "
                             f"got {samples_per_prompt}")
        self.reward_fn, self.k = reward_fn, samples_per_prompt

    def micro_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        prompts = [p for p in self.step_prompts(step, micro, rank) for _ in range(self.k)]
        s = self._sample(prompts, step, micro, rank)
        scores = torch.tensor([float(r) for r in self.reward_fn(prompts, s.texts)], dtype=torch.float32)
        if not torch.isfinite(scores).all():
            raise ValueError(f"the reward function returned {int((~torch.isfinite(scores)).sum())} non-finite "
                             "score(s); check the reward model or function")
        return self._tensors(list(zip(s.prompt_ids, s.completion_ids)), scores=scores)


class OnlinePairs(_OnlineSource):
    """Two completions per prompt from the current policy, ordered chosen/rejected by a judge.

    judge(prompts, a, b, seed) -> list[bool], True where a is preferred; e.g. the
    world's oracle `world.prefer` (Bradley–Terry on gold reward, optional label
    noise) or `judge_by_reward(reward_fn)`.
    """

    def __init__(self, *args, judge: Callable, reward_fn: RewardFn | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.judge, self.reward_fn = judge, reward_fn

    def micro_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        prompts = self.step_prompts(step, micro, rank)
        s = self._sample([p for p in prompts for _ in range(2)], step, micro, rank)
        a_wins = self.judge(prompts, s.texts[0::2], s.texts[1::2], sampling_seed(self.seed, step, micro, rank) + 1)
        chosen, rejected = [], []
        for i, a_first in enumerate(a_wins):
            a = (s.prompt_ids[2 * i], s.completion_ids[2 * i])
            b = (s.prompt_ids[2 * i + 1], s.completion_ids[2 * i + 1])
            chosen.append(a if a_first else b)
            rejected.append(b if a_first else a)
        extra = {}
        if self.reward_fn is not None:  # scores of what was sampled, for the training curves
            texts = [s.texts[2 * i + (0 if w else 1)] for i, w in enumerate(a_wins)]
            texts += [s.texts[2 * i + (1 if w else 0)] for i, w in enumerate(a_wins)]
            extra["scores"] = torch.tensor([float(r) for r in self.reward_fn(prompts + prompts, texts)])
        return self._tensors(chosen + rejected, **extra)


def judge_by_reward(reward_fn: RewardFn) -> Callable:
    """Return a judge that prefers the higher-reward completion (ties: the first)."""

    def judge(prompts, a, b, seed):
        ra, rb = reward_fn(prompts, a), reward_fn(prompts, b)
        return [x >= y for x, y in zip(ra, rb)]

    return judge


def judge_by_oracle(world, label_noise: float = 0.0) -> Callable:
    """Return the world's gold preference oracle as a judge (Bradley–Terry draw, labels flipped w.p. label_noise).

    Rendered conversational prompts are read as the world's question inside them (`ChatPromptJudge`).
    """
    from .worlds.base import ChatPromptJudge

    world = ChatPromptJudge(world)

    def judge(prompts, a, b, seed):
        return world.prefer(list(prompts), list(a), list(b), seed=seed, label_noise=label_noise)

    return judge


class OnlineLists(_OnlineSource):
    """Lists of K distinct completions per prompt from the current policy, scored by `reward_fn`.

    The batch has the layout of offline lists (`alignlib.lists.collate_lists`): row
    j·B + b is completion j of list b, and `scores` [B, K] holds their rewards, so the
    listwise step of `--method listwise` trains on it unchanged (`online_listwise`).

    Duplicates. A list is a ranking of distinct completions: the same text twice would be a
    tie with itself and would count one sequence twice in every Plackett–Luce denominator.
    The slots of a list that repeat an earlier completion are therefore redrawn (seeded, up
    to `max_redraws` rounds, each drawing only the missing slots), i.e. the K completions are
    sampled from π without replacement. A list still short of K distinct completions after
    that, or whose K rewards are all equal (no ranking signal), is dropped from the
    micro-batch; ties among some completions are kept (the losses never compare tied
    completions). `self.dropped` counts the dropped lists by reason and `self.redrawn` the
    redrawn slots; the batch also carries `lists_dropped` (a 0-d tensor) for the step's metrics.
    """

    def __init__(self, *args, reward_fn: RewardFn, list_size: int, max_redraws: int = 4, **kwargs):
        super().__init__(*args, **kwargs)
        if list_size < 2:
            raise ValueError(f"a list ranks K ≥ 2 completions of one prompt: list_size (samples_per_prompt) must be "
                             f"≥ 2, got {list_size}")
        if max_redraws < 0:
            raise ValueError(f"max_redraws must be ≥ 0, got {max_redraws}")
        self.reward_fn, self.k, self.max_redraws = reward_fn, list_size, max_redraws
        self.dropped = {"duplicate_completion": 0, "all_tied": 0}
        self.redrawn = 0

    def _distinct_lists(self, prompts: list[str], step: int, micro: int, rank: int) -> list[list]:
        """Return, per prompt, up to K (prompt_ids, completion_ids, text) with distinct texts, in draw order."""
        s = self._sample([p for p in prompts for _ in range(self.k)], step, micro, rank)
        lists: list[list] = [[] for _ in prompts]
        for i in range(len(s.texts)):
            target = lists[i // self.k]
            if all(s.texts[i] != text for _, _, text in target):
                target.append((s.prompt_ids[i], s.completion_ids[i], s.texts[i]))
        for redraw in range(1, self.max_redraws + 1):
            short = [b for b, items in enumerate(lists) if len(items) < self.k]
            if not short:
                break
            need = [(b, self.k - len(lists[b])) for b in short]
            self.redrawn += sum(n for _, n in need)
            # a seed of its own per round: (seed, step, micro, rank) with the round folded into the micro index
            extra = self._sample([prompts[b] for b, n in need for _ in range(n)], step,
                                 micro + redraw * 1_000_003, rank)
            i = 0
            for b, n in need:
                for _ in range(n):
                    if len(lists[b]) < self.k and all(extra.texts[i] != text for _, _, text in lists[b]):
                        lists[b].append((extra.prompt_ids[i], extra.completion_ids[i], extra.texts[i]))
                    i += 1
        return lists

    def micro_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        prompts = self.step_prompts(step, micro, rank)
        lists = self._distinct_lists(prompts, step, micro, rank)
        kept, kept_scores = [], []
        for prompt, items in zip(prompts, lists):
            if len(items) < self.k:
                self.dropped["duplicate_completion"] += 1
                continue
            scores = [float(r) for r in self.reward_fn([prompt] * self.k, [t for _, _, t in items])]
            if not all(math.isfinite(r) for r in scores):
                raise ValueError(f"the reward function returned a non-finite score for prompt {prompt!r}; "
                                 "check the reward model or function")
            if len(set(scores)) == 1:
                self.dropped["all_tied"] += 1
                continue
            kept.append(items)
            kept_scores.append(scores)
        if not kept:
            raise ValueError(f"every one of the {len(prompts)} sampled lists of step {step} was dropped "
                             f"(dropped so far: {self.dropped}): the policy repeats itself or the reward cannot "
                             "tell its samples apart; use fewer samples_per_prompt, a higher temperature or a "
                             "finer reward")
        rows = [(items[j][0], items[j][1]) for j in range(self.k) for items in kept]  # completion-major
        return self._tensors(rows, scores=torch.tensor(kept_scores, dtype=torch.float32),
                             lists_dropped=torch.tensor(float(len(prompts) - len(kept))))


def online_lists_source(ctx) -> OnlineLists:
    """`Method.source` of online_listwise: lists of `samples_per_prompt` completions scored by `ctx.reward_fn`."""
    return OnlineLists(ctx.policy, ctx.tokenizer, ctx.prompts, reward_fn=ctx.reward_fn,
                       list_size=ctx.config.samples_per_prompt, **ctx.common())
