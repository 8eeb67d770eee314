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

Sampling is pure (temperature 1 unless set, no top-k/top-p; see
`alignlib.rollout`) and seeded by (seed, step, micro-step, process), so a run
resumed from a checkpoint draws exactly the samples an uninterrupted run would
have drawn (the weights are restored first). One optimizer step is taken per
sampled batch: the samples are exactly on-policy, and importance ratios are 1.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .batches import IndexStream
from .data import collate
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
        self.policy, self.tokenizer, self.prompts = policy, tokenizer, list(prompts)
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
    """Return the world's gold preference oracle as a judge (Bradley–Terry draw, labels flipped w.p. label_noise)."""

    def judge(prompts, a, b, seed):
        return world.prefer(list(prompts), list(a), list(b), seed=seed, label_noise=label_noise)

    return judge
