"""Data formats, validation with clear errors, tokenisation and collation.

Column conventions follow TRL: preference data has `prompt`, `chosen`,
`rejected`; supervised data has `prompt`, `completion`. Prompts and
completions are plain text here; the prompt is tokenised with the tokenizer's
special tokens (BOS), the completion without them and followed by EOS, and the
two id lists are concatenated (never the strings, so no token straddles the
boundary).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

COLUMNS = {"pairs": ("prompt", "chosen", "rejected"), "sft": ("prompt", "completion"), "prompts": ("prompt",)}


class DataError(ValueError):
    """Raised for malformed input data; the message names the field and the fix."""


# ------------------------------------------------------------------ loading
def _read_json_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    text = path.read_text()
    if path.suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {lineno}: not valid JSON ({exc.msg})") from None
        return rows
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if isinstance(data, dict) and "data" in data:
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects (or {{'data': [...]}})")
        return data
    raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .json or .jsonl")


def load_rows(source: Any, kind: str) -> list[dict[str, str]]:
    """Return validated rows of `kind` ("pairs" or "sft") from a path, a `datasets.Dataset` or a list of dicts.

    Raises DataError naming the file/row/column when a column is missing, a
    value is not a string, or a completion is empty.
    """
    if kind not in COLUMNS:
        raise ValueError(f"unknown data kind {kind!r}; use one of {sorted(COLUMNS)}")
    where = "data"
    if isinstance(source, (str, Path)):
        where = str(source)
        rows = _read_json_rows(Path(source))
    elif hasattr(source, "column_names") and hasattr(source, "to_list"):  # datasets.Dataset
        rows = source.to_list()
    else:
        rows = list(source)
    if not rows:
        raise DataError(f"{where}: no rows")
    required = COLUMNS[kind]
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{where}, row {i}: expected an object with columns {required}, got {type(row).__name__}")
        missing = [c for c in required if c not in row]
        if missing:
            raise DataError(
                f"{where}, row {i}: missing column(s) {missing}; {kind} data needs columns {list(required)} "
                f"(found {sorted(row)})"
            )
        for col in required:
            value = row[col]
            if isinstance(value, list):
                raise DataError(
                    f"{where}, row {i}, column {col!r}: conversational (list of messages) data is not supported "
                    "yet; render it to text first with tokenizer.apply_chat_template(..., tokenize=False)"
                )
            if not isinstance(value, str):
                raise DataError(f"{where}, row {i}, column {col!r}: expected a string, got {type(value).__name__}")
            if col != "prompt" and not value.strip():
                raise DataError(f"{where}, row {i}, column {col!r} is empty; every completion needs text")
        if kind == "pairs" and row["chosen"] == row["rejected"]:
            raise DataError(
                f"{where}, row {i}: chosen and rejected are the same text, which carries no preference (the loss "
                "would push one sequence up and down at once); drop such rows"
            )
    return [{c: row[c] for c in required} for row in rows]


# ------------------------------------------------------------- tokenising
@dataclass
class TokenizedExample:
    """Token ids of one prompt and its completion(s); `completions` has 1 (SFT) or 2 (chosen, rejected) entries."""

    prompt_ids: list[int]
    completions: list[list[int]]
    scores: list[float] | None = None  # graded labels of ranked lists (alignlib.lists), one per completion


def encode_prompt(tokenizer, prompt: str, max_prompt_length: int | None) -> list[int]:
    """Return prompt ids (with the tokenizer's special tokens); refuse prompts over `max_prompt_length`."""
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if max_prompt_length is not None and len(ids) > max_prompt_length:
        raise DataError(
            f"prompt has {len(ids)} tokens, more than max_prompt_length={max_prompt_length}: {prompt[:80]!r}... "
            "Prompts are never truncated silently (the answer would no longer fit the question); "
            "raise --max_prompt_length or drop such rows."
        )
    return ids


def encode_completion(tokenizer, completion: str, max_completion_length: int | None) -> tuple[list[int], bool]:
    """Return (completion ids ending in EOS, whether they were truncated to `max_completion_length`)."""
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if max_completion_length is not None and len(ids) > max_completion_length:
        return ids[:max_completion_length], True
    return ids, False


def tokenize_rows(
    rows: Sequence[dict[str, str]],
    tokenizer,
    kind: str,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
) -> list[TokenizedExample]:
    """Tokenise validated rows; completions longer than the limit are truncated with one warning."""
    completion_cols = COLUMNS[kind][1:]
    out, truncated = [], 0
    for i, row in enumerate(rows):
        try:
            prompt_ids = encode_prompt(tokenizer, row["prompt"], max_prompt_length)
        except DataError as exc:
            raise DataError(f"row {i}: {exc}") from None
        completions = []
        for col in completion_cols:
            ids, cut = encode_completion(tokenizer, row[col], max_completion_length)
            truncated += cut
            completions.append(ids)
        out.append(TokenizedExample(prompt_ids, completions))
    warn_truncated(truncated, max_completion_length)
    return out


def warn_truncated(count: int, max_completion_length: int | None) -> None:
    """Warn once, with the count, when completions were cut to `max_completion_length` tokens."""
    if count:
        warnings.warn(
            f"{count} completion(s) were longer than max_completion_length={max_completion_length} tokens "
            "and were truncated (their EOS is cut off); raise --max_completion_length to keep them whole",
            stacklevel=3,
        )


def collate(sequences: Iterable[tuple[list[int], list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad (prompt_ids, completion_ids) rows into input_ids, attention_mask, completion_mask [N, T]."""
    sequences = list(sequences)
    length = max(len(p) + len(c) for p, c in sequences)
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    completion_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, (p, c) in enumerate(sequences):
        n = len(p) + len(c)
        input_ids[i, :n] = torch.tensor(p + c)
        attention_mask[i, :n] = 1
        completion_mask[i, len(p):n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def collate_examples(examples: Sequence[TokenizedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Collate a batch: for pairs, all chosen rows first, then all rejected rows (TRL's layout).

    K completions per example are laid out completion-major (row j·B + b is completion j
    of example b); examples with `scores` (ranked lists) add "scores" [B, K].
    """
    n_completions = len(examples[0].completions)
    rows = [(ex.prompt_ids, ex.completions[k]) for k in range(n_completions) for ex in examples]
    batch = collate(rows, pad_token_id)
    if examples[0].scores is not None:  # ranked lists: scores[b, j] labels row j·B + b
        batch["scores"] = torch.tensor([ex.scores for ex in examples], dtype=torch.float32)
    return batch
