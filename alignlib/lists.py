"""Ranked-list data: validation with clear errors, tokenisation, collation and conversion to pairs.

A list row is one prompt with K completions and a graded label for each:

    {"prompt": str, "completions": [str] * K, "scores": [float] * K}      higher score = better
    {"prompt": str, "completions": [str] * K, "ranks": [int] * K}         1 = best; equal ranks are ties

Ranks are turned into scores ψ = K − rank (best K − 1, worst ≥ 0), the graded-relevance
convention of learning-to-rank, so the listwise losses see one kind of label. Every list
of a data set must have the same K (the batch is one [B, K] block).

Batch layout. `collate_lists` lays lists out as `alignlib.data.collate_examples` does,
completion-major: row j·B + b of input_ids / attention_mask / completion_mask is
completion j of list b, and `scores[b, j]` is its label. `list_logps` reshapes the
[K·B] sequence log-probs of those rows into the [B, K] of `alignlib.losses.listwise`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .data import (
    DataError,
    TokenizedExample,
    _read_json_rows,
    collate_examples,
    encode_completion,
    encode_prompt,
    warn_truncated,
)

ON_BAD = ("raise", "skip")
SKIP_REASONS = ("empty_completion", "non_finite_score", "duplicate_completion", "all_tied")


# ------------------------------------------------------------------ loading and validation
def _source_rows(source: Any) -> tuple[list, str]:
    """Return (rows, where) from a .json/.jsonl path, a `datasets.Dataset` or an iterable of dicts."""
    if isinstance(source, (str, Path)):
        return _read_json_rows(Path(source)), str(source)
    if hasattr(source, "column_names") and hasattr(source, "to_list"):  # datasets.Dataset
        return source.to_list(), "data"
    return list(source), "data"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # True/False are not scores


def _check_structure(row: Any, where: str) -> tuple[list[str], list[float]]:
    """Return (completions, scores) of one row or raise DataError naming the fix; `where` names the row."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with prompt, completions and scores, got {type(row).__name__}")
    label = [c for c in ("scores", "ranks") if c in row]
    missing = [c for c in ("prompt", "completions") if c not in row] + ([] if label else ["scores (or ranks)"])
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; list data needs 'prompt', 'completions' and "
                        f"'scores' (higher = better) or 'ranks' (1 = best) (found {sorted(row)})")
    if len(label) == 2:
        raise DataError(f"{where}: has both 'scores' and 'ranks'; keep one, so the order is defined once")
    if not isinstance(row["prompt"], str):
        raise DataError(f"{where}, column 'prompt': expected a string, got {type(row['prompt']).__name__}")
    completions, labels = row["completions"], row[label[0]]
    if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
        raise DataError(f"{where}, column 'completions': expected a list of strings")
    if not isinstance(labels, list) or not all(_is_number(v) for v in labels):
        raise DataError(f"{where}, column {label[0]!r}: expected a list of numbers, one per completion")
    if len(labels) != len(completions):
        raise DataError(f"{where}: {len(completions)} completions but {len(labels)} {label[0]}; "
                        f"give exactly one {label[0][:-1]} per completion, in the same order")
    if len(completions) < 2:
        raise DataError(f"{where}: a list needs K ≥ 2 completions to rank, got {len(completions)}; "
                        "drop the row or add completions")
    if label[0] == "scores":
        return completions, [float(v) for v in labels]
    return completions, _ranks_to_scores(labels, where)


def _ranks_to_scores(ranks: list, where: str) -> list[float]:
    """Return ψ = K − rank for integer ranks in 1..K, or raise DataError."""
    k = len(ranks)
    if not all(float(r).is_integer() and 1 <= r <= k for r in ranks):
        raise DataError(f"{where}, column 'ranks': ranks must be whole numbers from 1 (best) to K={k}, got {ranks}")
    return [float(k - int(r)) for r in ranks]


def _content_problem(completions: list[str], scores: list[float]) -> str | None:
    """Return the reason a structurally valid list cannot be trained on (see SKIP_REASONS), or None."""
    if any(not c.strip() for c in completions):  # e.g. a sample that ended at once (world_dataset keeps it)
        return "empty_completion"
    if not all(math.isfinite(s) for s in scores):
        return "non_finite_score"
    if len(set(completions)) < len(completions):
        return "duplicate_completion"
    if len(set(scores)) == 1:
        return "all_tied"
    return None


_PROBLEM_TEXT = {
    "empty_completion": "column 'completions': completion {empty} is empty; every completion needs text",
    "non_finite_score": "a score is NaN or infinite",
    "duplicate_completion": "the same completion text appears twice (its two labels would push one sequence "
                            "two ways; deduplicate it)",
    "all_tied": "all scores are equal, so the list carries no ranking signal",
}


def _check_same_k(ks: list[int], where: str) -> None:
    """Raise DataError naming the rows when lists of one data set differ in K."""
    if len(set(ks)) <= 1:
        return
    by_k: dict[int, list[int]] = {}
    for i, k in enumerate(ks):
        by_k.setdefault(k, []).append(i)
    common = max(by_k, key=lambda k: len(by_k[k]))
    odd = {k: rows[:5] + (["..."] if len(rows) > 5 else []) for k, rows in by_k.items() if k != common}
    raise DataError(f"{where}: lists differ in length; most have K={common}, but rows {odd} (by K) differ. "
                    "A batch is one [B, K] block: subsample or split the lists to one K first")


def load_list_rows(source: Any, on_bad: str = "raise") -> tuple[list[dict], dict[str, int]]:
    """Return (validated list rows, counts of dropped rows by reason) from a path, a Dataset or a list of dicts.

    Always raised as DataError, naming the row and the fix (the data is malformed): a
    missing column, both or neither of scores/ranks, wrong types, a
    number of scores (ranks) different from the number of completions, K < 2, ranks
    outside 1..K, and lists of different K in one data set (the rows are named).

    Raised with on_bad="raise", dropped with a count with on_bad="skip" (single lists
    that can be thrown away, SKIP_REASONS): an empty (or blank) completion, a NaN or infinite score, the same completion
    text twice in one list, and all scores equal (no ranking signal).

    Kept rows are {"prompt", "completions", "scores"}, with scores as floats (from ranks: K − rank).
    """
    if on_bad not in ON_BAD:
        raise ValueError(f"on_bad must be one of {ON_BAD}, got {on_bad!r}")
    rows, where = _source_rows(source)
    if not rows:
        raise DataError(f"{where}: no rows")
    parsed = [_check_structure(row, f"{where}, row {i}") for i, row in enumerate(rows)]
    _check_same_k([len(c) for c, _ in parsed], where)
    kept, dropped = [], dict.fromkeys(SKIP_REASONS, 0)
    for i, (row, (completions, scores)) in enumerate(zip(rows, parsed)):
        problem = _content_problem(completions, scores)
        if problem is None:
            kept.append({"prompt": row["prompt"], "completions": completions, "scores": scores})
        elif on_bad == "raise":
            empty = [c.strip() for c in completions].index("") if problem == "empty_completion" else None
            raise DataError(f"{where}, row {i}: {_PROBLEM_TEXT[problem].format(empty=empty)}; fix or drop it, or pass on_bad='skip' "
                            "to drop such rows with a count")
        else:
            dropped[problem] += 1
    if not kept:
        raise DataError(f"{where}: every row was dropped ({dropped}); nothing is left to train on")
    return kept, dropped


# ------------------------------------------------------------------ tokenising and collating
def tokenize_list_rows(
    rows: Sequence[dict],
    tokenizer,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
) -> tuple[list[TokenizedExample], torch.Tensor]:
    """Return (examples with the K completions in row order, scores [N, K] float32) of validated list rows.

    Prompts over `max_prompt_length` are refused; completions over `max_completion_length`
    are truncated with one counting warning, as `alignlib.data.tokenize_rows` does.
    """
    examples, truncated = [], 0
    for i, row in enumerate(rows):
        try:
            prompt_ids = encode_prompt(tokenizer, row["prompt"], max_prompt_length)
        except DataError as exc:
            raise DataError(f"row {i}: {exc}") from None
        completions = []
        for text in row["completions"]:
            ids, cut = encode_completion(tokenizer, text, max_completion_length)
            truncated += cut
            completions.append(ids)
        examples.append(TokenizedExample(prompt_ids, completions))
    warn_truncated(truncated, max_completion_length)
    scores = torch.tensor([row["scores"] for row in rows], dtype=torch.float32)
    return examples, scores


def collate_lists(examples: Sequence[TokenizedExample], scores: torch.Tensor,
                  pad_token_id: int) -> dict[str, torch.Tensor]:
    """Return `collate_examples`' tensors [K·B, T] plus "scores" [B, K]: row j·B + b is completion j of list b.

    `scores` are the labels of exactly these B examples, in the same order.
    """
    ks = {len(ex.completions) for ex in examples}
    if len(ks) != 1 or tuple(scores.shape) != (len(examples), next(iter(ks))):
        raise ValueError(f"expected B={len(examples)} lists of one K and scores [B, K]; got K values {sorted(ks)} "
                         f"and scores of shape {tuple(scores.shape)}")
    return {**collate_examples(examples, pad_token_id), "scores": scores}


def list_logps(logps: torch.Tensor, k: int) -> torch.Tensor:
    """Return the [B, K] view of per-row values [K·B] laid out completion-major (row j·B + b → [b, j])."""
    if logps.dim() != 1 or logps.shape[0] % k:
        raise ValueError(f"expected a [K·B] tensor with K={k}, got shape {tuple(logps.shape)}")
    return logps.view(k, -1).transpose(0, 1)


# ------------------------------------------------------------------ lists to pairs
def lists_to_pairs(rows: Sequence[dict], mode: str = "best_worst") -> list[dict]:
    """Return TRL preference rows {"prompt", "chosen", "rejected", "chosen_score", "rejected_score"} from lists.

    best_worst: one pair per list, its best against its worst completion (the first in row
    order among tied best or tied worst). all_pairs: every pair with a strictly higher
    score, K(K − 1)/2 per list without ties; tied pairs carry no preference and are left
    out. Lists with all scores equal give no pair. Pairs follow the list order, and within
    a list the better completion's rank, then the worse one's.
    """
    if mode not in ("best_worst", "all_pairs"):
        raise ValueError(f"unknown mode {mode!r}; use 'best_worst' or 'all_pairs'")
    pairs = []
    for row in rows:
        order = sorted(range(len(row["scores"])), key=lambda i: -row["scores"][i])  # stable: ties keep row order
        if mode == "best_worst":
            candidates = [(order[0], min(order, key=lambda i: row["scores"][i]))]
        else:
            candidates = [(a, b) for n, a in enumerate(order) for b in order[n + 1:]]
        for a, b in candidates:
            if row["scores"][a] > row["scores"][b]:
                pairs.append({"prompt": row["prompt"], "chosen": row["completions"][a],
                              "rejected": row["completions"][b], "chosen_score": row["scores"][a],
                              "rejected_score": row["scores"][b]})
    return pairs
