"""Data formats, validation with clear errors, tokenisation and collation.

Column conventions follow TRL: preference data has `prompt`, `chosen`,
`rejected`; supervised data has `prompt`, `completion`. Values are plain text
(TRL's standard format) or lists of {"role", "content"} messages (its
conversational format, rendered by the tokenizer's chat template: see
`render_conversation`). The prompt is tokenised with the tokenizer's
special tokens (BOS), the completion without them and followed by EOS, and the
two id lists are concatenated (never the strings, so no token straddles the
boundary).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

COLUMNS = {"pairs": ("prompt", "chosen", "rejected"), "sft": ("prompt", "completion"), "prompts": ("prompt",)}
# optional columns of pair rows: one reward per completion token (its tokens, then EOS), read by T-REG
TOKEN_REWARD_COLUMNS = ("chosen_token_rewards", "rejected_token_rewards")


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


def _is_hub_id(source) -> bool:
    """True for a `datasets` hub id such as "trl-lib/ultrafeedback_binarized" (optionally ":split")."""
    path = Path(source)
    return isinstance(source, str) and path.suffix not in (".json", ".jsonl") and not path.exists() \
        and "/" in source and not source.startswith((".", "/"))


def _read_hub_rows(spec: str) -> list[dict[str, Any]]:
    """Return the rows of a hub data set, "owner/name" or "owner/name:split" (default split: train)."""
    name, _, split = spec.partition(":")
    try:
        import datasets

        return datasets.load_dataset(name, split=split or "train").to_list()
    except Exception as exc:  # offline, unknown id, unknown split: one clear message
        raise DataError(
            f"could not load data set {spec!r} from the Hugging Face hub ({type(exc).__name__}: {str(exc)[:200]}). "
            "A hub id needs network access (or a filled datasets cache); otherwise pass a local .json/.jsonl file."
        ) from None


def load_rows(source: Any, kind: str) -> list[dict[str, Any]]:
    """Return validated rows of `kind` ("pairs" or "sft") from a path, a `datasets.Dataset` or a list of dicts.

    Raises DataError naming the file/row/column when a column is missing, a
    value is not a string, or a completion is empty.
    """
    if kind == "cut":  # appended kind: completions with judgement-marked tokens (below)
        return load_cut_rows(source)
    if kind not in COLUMNS:
        raise ValueError(f"unknown data kind {kind!r}; use one of {sorted(COLUMNS)}")
    where = "data"
    if isinstance(source, (str, Path)):
        where = str(source)
        rows = _read_hub_rows(source) if _is_hub_id(source) else _read_json_rows(Path(source))
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
        conversational = [isinstance(row[c], list) for c in required]
        if any(conversational) and not all(conversational):
            raise DataError(
                f"{where}, row {i}: some columns are lists of messages and some are text; use one format per row "
                "(TRL's conversational format: every column a list of {'role', 'content'} messages)"
            )
        for col in required:
            value = row[col]
            if isinstance(value, list):
                check_messages(value, f"{where}, row {i}, column {col!r}")
                continue
            if not isinstance(value, str):
                raise DataError(f"{where}, row {i}, column {col!r}: expected a string, got {type(value).__name__}")
            if col != "prompt" and not value.strip():
                raise DataError(f"{where}, row {i}, column {col!r} is empty; every completion needs text")
        if kind == "pairs" and row["chosen"] == row["rejected"]:
            raise DataError(
                f"{where}, row {i}: chosen and rejected are the same text, which carries no preference (the loss "
                "would push one sequence up and down at once); drop such rows"
            )
    if kind == "pairs" and any(c in row for row in rows for c in TOKEN_REWARD_COLUMNS):
        return [{**{c: row[c] for c in required}, **_token_reward_columns(row, i, where)} for i, row in enumerate(rows)]
    return [{c: row[c] for c in required} for row in rows]


def _token_reward_columns(row: dict, i: int, where: str) -> dict[str, list[float]]:
    """Return the validated optional token-reward columns of pair row `i` (both or neither)."""
    missing = [c for c in TOKEN_REWARD_COLUMNS if c not in row]
    if missing:
        raise DataError(f"{where}, row {i}: missing column(s) {missing}; token rewards need both columns "
                        f"{list(TOKEN_REWARD_COLUMNS)} in every row (or none in any)")
    if isinstance(row["prompt"], list):
        raise DataError(f"{where}, row {i}: token rewards are supported for text rows only (a chat template "
                        "changes the completion's tokens); render the conversation to text first")
    out = {}
    for c in TOKEN_REWARD_COLUMNS:
        values = row[c]
        if not isinstance(values, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise DataError(f"{where}, row {i}, column {c!r}: expected a list of finite numbers (one per completion "
                            f"token, EOS included), got {str(values)[:80]}")
        out[c] = [float(v) for v in values]
    return out


def check_messages(messages: list, where: str) -> None:
    """Raise DataError unless `messages` is a non-empty list of {"role": str, "content": str} dicts."""
    if not messages:
        raise DataError(f"{where}: an empty list of messages")
    for j, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise DataError(f"{where}, message {j}: expected {{'role': str, 'content': str}}, got {m!r:.80}")


def require_chat_template(tokenizer) -> None:
    """Raise DataError unless `tokenizer` has a chat template to render lists of messages with."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "conversational data (lists of messages) needs a tokenizer with a chat template, and this tokenizer has "
            "none (tokenizer.chat_template is empty). Use an instruction-tuned model's tokenizer, set "
            "tokenizer.chat_template, or render the rows to text yourself."
        )


class RenderedPrompt(str):
    """A prompt's text as a chat template rendered it: `encode_prompt` adds no special tokens to it.

    A `str` (every sampler, judge and reward function takes it as the prompt text),
    so it passes unchanged through code that only copies or indexes prompts; it keeps
    the original `messages`, for a reward function with a chat template of its own.
    String operations (`+`, `strip`, ...) return a plain `str` and lose the mark.
    """

    messages: list[dict]

    def __new__(cls, text: str, messages: list[dict]):
        obj = super().__new__(cls, text)
        obj.messages = messages
        return obj


def check_prompt_format(prompts: Sequence, where: str = "prompts") -> bool:
    """Return True if every prompt is a list of messages, False if every one is text; else raise DataError.

    The error names the first row of each format (mixed prompts), or the row whose
    messages are ill-formed (`check_messages`) or whose prompt is neither.
    """
    chat = [i for i, p in enumerate(prompts) if isinstance(p, list)]
    text = [i for i, p in enumerate(prompts) if not isinstance(p, list)]
    if chat and text:
        raise DataError(
            f"{where}: row {chat[0]} is a list of messages but row {text[0]} is text; give every prompt in one "
            "format (all text, or all lists of {'role', 'content'} messages, TRL's conversational format)"
        )
    for i, p in enumerate(prompts):
        if isinstance(p, list):
            check_messages(p, f"{where}, row {i}")
        elif not isinstance(p, str):
            raise DataError(f"{where}, row {i}: a prompt must be text or a list of messages, got {type(p).__name__}")
    return bool(chat)


def render_prompts(tokenizer, prompts: Sequence, where: str = "prompts") -> list[str]:
    """Return prompts for sampling: text as is, lists of messages rendered once by the chat template.

    A list of {"role", "content"} messages (TRL's conversational prompt-only format) becomes a
    `RenderedPrompt`: `apply_chat_template(messages, add_generation_prompt=True, tokenize=False)`,
    so the policy continues with the assistant's turn, and its ids are exactly those of
    `apply_chat_template(..., tokenize=True)` (no second BOS). A list ending with an assistant
    message is a prefill: rendered with `continue_final_message=True` instead, as TRL does,
    so the policy continues that message. Raises DataError when the
    prompts mix the two formats, a message list is ill-formed (naming the row), or the
    tokenizer has no chat template. Already rendered prompts pass through unchanged.
    """
    prompts = list(prompts)
    if not check_prompt_format(prompts, where):
        return prompts
    require_chat_template(tokenizer)
    out = []
    for messages in prompts:
        prefill = messages[-1]["role"] == "assistant"  # the policy continues the assistant's started answer
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not prefill,
                                             continue_final_message=prefill)
        out.append(RenderedPrompt(text, messages))
    return out


def render_conversation(tokenizer, prompt: list[dict], completion: list[dict]) -> tuple[str, str]:
    """Return (prompt text, completion text) of a conversational row, rendered by the tokenizer's chat template.

    The prompt is rendered with the generation prompt (the assistant turn's
    header); the completion is what the full conversation adds after it, so
    prompt + completion is exactly the rendered conversation.
    """
    require_chat_template(tokenizer)
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    if not full.startswith(prompt_text):
        raise DataError(
            "the chat template renders the prompt differently alone and followed by the completion, so the "
            f"completion cannot be cut out of the conversation (prompt: {prompt_text[-60:]!r}); check the template"
        )
    return prompt_text, full[len(prompt_text):]


# ------------------------------------------------------------- tokenising
@dataclass
class TokenizedExample:
    """Token ids of one prompt and its completion(s); `completions` has 1 (SFT) or 2 (chosen, rejected) entries."""

    prompt_ids: list[int]
    completions: list[list[int]]
    scores: list[float] | None = None  # graded labels of ranked lists (alignlib.lists), one per completion
    unlikely: list[list[int]] | None = None  # "cut" data: 0/1 per completion token, 1 = marked by the judgement
    ref_logps: list[float] | None = None  # log π_ref of each completion, when precomputed (precompute_ref_log_probs)
    token_rewards: list[list[float]] | None = None  # pairs: one reward per completion token, per completion (T-REG)


def encode_prompt(tokenizer, prompt: str, max_prompt_length: int | None, add_special_tokens: bool = True) -> list[int]:
    """Return prompt ids (with the tokenizer's special tokens); refuse prompts over `max_prompt_length`.

    add_special_tokens=False for text rendered by a chat template, which writes BOS itself;
    a `RenderedPrompt` (see `render_prompts`), or any text that already begins with the
    tokenizer's BOS token, is always encoded without them, so BOS is never doubled.
    """
    bos = getattr(tokenizer, "bos_token", None)
    if isinstance(prompt, RenderedPrompt) or (bos and prompt.startswith(bos)):
        add_special_tokens = False
    ids = tokenizer(str(prompt), add_special_tokens=add_special_tokens)["input_ids"]
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
    if kind == "cut":
        return tokenize_cut_rows(rows, tokenizer, max_prompt_length, max_completion_length)
    completion_cols = COLUMNS[kind][1:]
    out, truncated = [], 0
    for i, row in enumerate(rows):
        chat = isinstance(row["prompt"], list)
        texts = {}
        try:
            for col in completion_cols:  # conversational rows: render each completion after the prompt
                texts["prompt"], texts[col] = (render_conversation(tokenizer, row["prompt"], row[col]) if chat
                                               else (row["prompt"], row[col]))
            prompt_ids = encode_prompt(tokenizer, texts["prompt"], max_prompt_length, add_special_tokens=not chat)
        except DataError as exc:
            raise DataError(f"row {i}: {exc}") from None
        completions, token_rewards = [], []
        for col in completion_cols:
            ids, cut = encode_completion(tokenizer, texts[col], max_completion_length)
            truncated += cut
            completions.append(ids)
            if f"{col}_token_rewards" in row:  # aligned with the ids: the completion's tokens, then EOS
                token_rewards.append(_align_token_rewards(row[f"{col}_token_rewards"], ids, cut, f"row {i}, {col}"))
        out.append(TokenizedExample(prompt_ids, completions, token_rewards=token_rewards or None))
    warn_truncated(truncated, max_completion_length)
    return out


def _align_token_rewards(values: list[float], ids: list[int], truncated: bool, where: str) -> list[float]:
    """Return one token reward per id of the (possibly truncated) completion; DataError if the count is wrong."""
    if len(values) == len(ids) or (truncated and len(values) > len(ids)):
        return list(values[: len(ids)])
    raise DataError(f"{where}: {len(values)} token rewards for a completion of {len(ids)} tokens (its tokens, then "
                    "EOS, as alignlib.diagnostics.completion_token_logprobs returns them); give one reward per token")


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
    if examples[0].ref_logps is not None:  # precomputed reference log-probs, in the rows' order
        batch["ref_logps"] = torch.tensor([ex.ref_logps[k] for k in range(n_completions) for ex in examples],
                                          dtype=torch.float32)
    if examples[0].scores is not None:  # ranked lists: scores[b, j] labels row j·B + b
        batch["scores"] = torch.tensor([ex.scores for ex in examples], dtype=torch.float32)
    if examples[0].token_rewards is not None:  # T-REG: per-token rewards, in input_ids coordinates (0 elsewhere)
        rewards = torch.zeros(batch["input_ids"].shape, dtype=torch.float32)
        for k in range(n_completions):
            for b, ex in enumerate(examples):
                start = len(ex.prompt_ids)
                values = ex.token_rewards[k]
                rewards[k * len(examples) + b, start:start + len(values)] = torch.tensor(values, dtype=torch.float32)
        batch["token_rewards"] = rewards
    if examples[0].unlikely is not None:  # "cut" data: the marked tokens, in input_ids coordinates
        marks = torch.zeros_like(batch["input_ids"])
        for i, ex in enumerate(examples):
            start = len(ex.prompt_ids)
            marks[i, start:start + len(ex.unlikely[0])] = torch.tensor(ex.unlikely[0], dtype=torch.long)
        batch["unlikely_mask"] = marks
    return batch


# ------------------------------------------------- "cut": judgement-marked tokens
CUT_COLUMNS = ("prompt", "completion", "unlikely")


def load_cut_rows(source: Any) -> list[dict[str, Any]]:
    """Return validated "cut" rows {prompt, completion, unlikely} from a path, a `datasets.Dataset` or dicts.

    `unlikely` lists the indices (0-based, over `completion.split()`) of the words a
    judgement marks as inappropriate: CUT applies unlikelihood to their tokens and
    likelihood to all others. An empty list makes the row plain likelihood
    (a positively judged response). Raises DataError naming the row and the fix.
    """
    where = "data"
    if isinstance(source, (str, Path)):
        where = str(source)
        rows = _read_json_rows(Path(source))
    elif hasattr(source, "column_names") and hasattr(source, "to_list"):
        rows = source.to_list()
    else:
        rows = list(source)
    if not rows:
        raise DataError(f"{where}: no rows")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{where}, row {i}: expected an object with columns {CUT_COLUMNS}, got {type(row).__name__}")
        missing = [c for c in CUT_COLUMNS if c not in row]
        if missing:
            raise DataError(f"{where}, row {i}: missing column(s) {missing}; cut data needs columns {list(CUT_COLUMNS)} "
                            f"(found {sorted(row)}); use unlikely=[] for a row with no marked word")
        for col in ("prompt", "completion"):
            if not isinstance(row[col], str):
                raise DataError(f"{where}, row {i}, column {col!r}: expected a string, got {type(row[col]).__name__}")
        if not row["completion"].strip():
            raise DataError(f"{where}, row {i}, column 'completion' is empty; every completion needs text")
        marks = row["unlikely"]
        n_words = len(row["completion"].split())
        if not isinstance(marks, (list, tuple)) or not all(isinstance(j, int) and not isinstance(j, bool) for j in marks):
            raise DataError(f"{where}, row {i}, column 'unlikely': expected a list of word indices (ints), got {marks!r}")
        bad = [j for j in marks if not 0 <= j < n_words]
        if bad:
            raise DataError(f"{where}, row {i}, column 'unlikely': word indices {bad} are outside the completion's "
                            f"{n_words} words (indices count whitespace-separated words from 0)")
        if len(set(marks)) == n_words:
            raise DataError(f"{where}, row {i}: every word of the completion is marked, so no token is left to learn "
                            "from and the row only pushes text down; drop such rows (or keep a few unmarked words)")
        out.append({"prompt": row["prompt"], "completion": row["completion"], "unlikely": sorted(set(marks))})
    return out


def tokenize_cut_rows(rows: Sequence[dict[str, Any]], tokenizer, max_prompt_length: int | None = None,
                      max_completion_length: int | None = None) -> list[TokenizedExample]:
    """Tokenise "cut" rows; a token is marked when its characters overlap a marked word (needs a fast tokenizer)."""
    import re

    if not getattr(tokenizer, "is_fast", False):
        raise DataError("cut data maps marked words to tokens through character offsets, which needs a fast "
                        "(Rust) tokenizer; load it with AutoTokenizer.from_pretrained(..., use_fast=True)")
    out, truncated = [], 0
    for i, row in enumerate(rows):
        try:
            prompt_ids = encode_prompt(tokenizer, row["prompt"], max_prompt_length)
        except DataError as exc:
            raise DataError(f"row {i}: {exc}") from None
        spans = [m.span() for m in re.finditer(r"\S+", row["completion"])]
        marked = [spans[j] for j in row["unlikely"]]
        enc = tokenizer(row["completion"], add_special_tokens=False, return_offsets_mapping=True)
        flags = [int(any(s < e2 and s2 < e for s2, e2 in marked)) for s, e in enc["offset_mapping"]]
        ids, flags = enc["input_ids"] + [tokenizer.eos_token_id], flags + [0]
        if max_completion_length is not None and len(ids) > max_completion_length:
            ids, flags, truncated = ids[:max_completion_length], flags[:max_completion_length], truncated + 1
        out.append(TokenizedExample(prompt_ids, [ids], unlikely=[flags]))
    warn_truncated(truncated, max_completion_length)
    return out
