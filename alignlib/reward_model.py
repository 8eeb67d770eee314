"""Learned rewards as callables: a trained reward model, its normalisation, and ensembles.

Everything that optimises against a reward (best-of-n, PPO, RAFT, ...) takes a
`reward_fn(prompts, responses) -> list[float]`. A world's `gold_reward` is one;
`RewardModel` and `RewardEnsemble` are the learned ones. They score the same
token ids the reward model was trained on (prompt ids with BOS, completion ids
with EOS; `alignlib.data`), so a score at inference means what it meant in
training.

Normalisation: a Bradley–Terry reward is defined only up to an additive
constant (and its scale depends on training length), so a learned reward is
made comparable by `normalise_under(policy samples)`: afterwards its mean is 0
and its standard deviation 1 on completions of that policy (the SFT policy, by
convention), as the issue's recipe and most RLHF pipelines do.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch

from .data import DataError, RenderedPrompt, collate, encode_completion, encode_prompt, render_prompts
from .losses.reward import ensemble_reward


class RewardModel:
    """A sequence classifier with one output, used as `reward_fn(prompts, responses) -> list[float]`.

    model: an in-memory `AutoModelForSequenceClassification` (num_labels = 1), or a
    path / hub id of one saved by `alignlib train --method reward` (its `final/` folder).
    """

    def __init__(self, model, tokenizer=None, batch_size: int = 512, max_completion_length: int | None = 64):
        if isinstance(model, (str, Path)):
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            path = str(model)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(path)
        if tokenizer is None:
            raise ValueError("pass the tokenizer together with an in-memory reward model")
        if getattr(model.config, "num_labels", 1) != 1:
            raise ValueError(f"a reward model has one output (num_labels=1); this one has {model.config.num_labels}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.max_completion_length = batch_size, max_completion_length
        self.shift, self.scale = 0.0, 1.0  # reward = (raw − shift) / scale

    @torch.no_grad()
    def raw_scores(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Return the model's unnormalised scores [N] of (prompt, response) rows."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; pass one prompt per response")
        device = next(self.model.parameters()).device
        rows = [(encode_prompt(self.tokenizer, self._own_rendering(p), None),
                 encode_completion(self.tokenizer, r, self.max_completion_length)[0])
                for p, r in zip(prompts, responses)]
        out = []
        for start in range(0, len(rows), self.batch_size):
            batch = collate(rows[start : start + self.batch_size], self.tokenizer.pad_token_id)
            logits = self.model(input_ids=batch["input_ids"].to(device),
                                attention_mask=batch["attention_mask"].to(device)).logits
            out.append(logits.squeeze(-1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def _own_rendering(self, prompt: str) -> str:
        """Return a conversational prompt as this model's own chat template renders it (it may differ from the
        policy's); text prompts, and any prompt when this tokenizer has no template, are scored as given."""
        if isinstance(prompt, RenderedPrompt) and getattr(self.tokenizer, "chat_template", None):
            return render_prompts(self.tokenizer, [prompt.messages])[0]
        return prompt

    def scores(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Return normalised rewards [N] as a tensor."""
        return (self.raw_scores(prompts, responses) - self.shift) / self.scale

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return self.scores(prompts, responses).tolist()

    def normalise_under(self, prompts: Sequence[str], responses: Sequence[str]) -> "RewardModel":
        """Set shift/scale so that rewards on these (policy-sampled) rows have mean 0 and std 1; return self."""
        raw = self.raw_scores(prompts, responses)
        if raw.numel() < 2:
            raise ValueError("normalisation needs at least 2 scored responses")
        self.shift, self.scale = raw.mean().item(), raw.std().item()
        if not self.scale > 0:
            raise ValueError("all normalisation responses got the same score; sample more varied responses")
        return self


class RewardEnsemble:
    """K reward models aggregated per response: mean, worst case (WCO), uncertainty-weighted (UWO) or robust.

    Members should be normalised under the same policy samples first, so that
    their disagreement (the variance UWO penalises) is not just an offset.
    """

    def __init__(self, members: Sequence[RewardModel], mode: str = "mean", uwo_lambda: float = 0.5,
                 robust_lambda: float = 0.5):
        if not members:
            raise ValueError("an ensemble needs at least one reward model")
        ensemble_reward(torch.zeros(1, 1), mode, uwo_lambda, robust_lambda)  # validates the settings early
        self.members, self.mode = list(members), mode
        self.uwo_lambda, self.robust_lambda = uwo_lambda, robust_lambda

    def member_scores(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Return every member's normalised rewards, [K, N]."""
        return torch.stack([m.scores(prompts, responses) for m in self.members])

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        scores = self.member_scores(prompts, responses)
        return ensemble_reward(scores, self.mode, self.uwo_lambda, self.robust_lambda).tolist()

    def with_mode(self, mode: str, uwo_lambda: float | None = None, robust_lambda: float | None = None):
        """Return the same members aggregated another way."""
        return RewardEnsemble(self.members, mode, self.uwo_lambda if uwo_lambda is None else uwo_lambda,
                              self.robust_lambda if robust_lambda is None else robust_lambda)


def preference_accuracy(reward_fn, rows: Sequence[dict], against: str = "label") -> float:
    """Return how often `reward_fn` orders a pair as the reference does (ties in the reward count ½).

    against="label": the row's own order (chosen ≻ rejected), i.e. agreement
    with whoever labelled the data (noise included). against="gold": the order
    of the rows' `chosen_gold` / `rejected_gold` values; pairs tied in gold are skipped.
    """
    if against not in ("label", "gold"):
        raise ValueError(f"against must be 'label' or 'gold', got {against!r}")
    if against == "gold":
        rows = [r for r in rows if r["chosen_gold"] != r["rejected_gold"]]
    if not rows:
        raise ValueError("no pairs to score")
    prompts = [r["prompt"] for r in rows]
    chosen = reward_fn(prompts, [r["chosen"] for r in rows])
    rejected = reward_fn(prompts, [r["rejected"] for r in rows])
    hits = []
    for r, c, j in zip(rows, chosen, rejected):
        sign = 1.0 if against == "label" or r["chosen_gold"] > r["rejected_gold"] else -1.0
        gap = sign * (c - j)
        hits.append(1.0 if gap > 0 else 0.5 if gap == 0 else 0.0)
    return sum(hits) / len(hits)


def check_scored_rows(rows: Sequence[dict], score_columns: Sequence[str] = ("chosen_score", "rejected_score"),
                      on_bad: str = "raise") -> tuple[list[dict], dict[str, int]]:
    """Validate scored preference rows; return (kept rows, counts of dropped rows by reason).

    Refused (on_bad="raise") or dropped with a count (on_bad="skip"): rows whose
    chosen and rejected texts are identical (no preference signal; a BT loss
    would push the same score up and down) and rows with a NaN or infinite score.
    """
    if on_bad not in ("raise", "skip"):
        raise ValueError(f"on_bad must be 'raise' or 'skip', got {on_bad!r}")
    kept, dropped = [], {"identical": 0, "non_finite_score": 0}
    for i, row in enumerate(rows):
        reason = None
        if row["chosen"] == row["rejected"]:
            reason = "identical"
        elif any(c in row and not math.isfinite(float(row[c])) for c in score_columns):
            reason = "non_finite_score"
        if reason is None:
            kept.append(row)
            continue
        if on_bad == "raise":
            what = ("chosen and rejected are the same text" if reason == "identical"
                    else f"a score ({', '.join(c for c in score_columns if c in row)}) is NaN or infinite")
            raise DataError(f"row {i}: {what}; fix or drop it, or pass on_bad='skip' to drop such rows with a count")
        dropped[reason] += 1
    return kept, dropped
