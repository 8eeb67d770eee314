"""`alignlib.data`: loading and validation with clear errors, tokenisation limits, collation layout."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from alignlib.data import DataError, collate, collate_examples, load_rows, tokenize_rows
from alignlib.pocket import build_tokenizer
from alignlib.worlds import get_world

GOOD = {"prompt": "review the pizza :", "chosen": "the pizza was good .", "rejected": "the pizza was bad ."}


@pytest.fixture(scope="module")
def tokenizer():
    """The pocket tokenizer of the reviews world (built directly: no model needed)."""
    return build_tokenizer(get_world("reviews"))


def _jsonl(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


# ------------------------------------------------------------------ loading
def test_jsonl_missing_rejected_names_column_and_row(tmp_path):
    """A JSONL row without `rejected` raises DataError naming the file, the row and the column."""
    path = _jsonl(tmp_path, [GOOD, {"prompt": "review the cafe :", "chosen": "it was fun ."}])
    with pytest.raises(DataError) as err:
        load_rows(path, "pairs")
    msg = str(err.value)
    assert "rejected" in msg and "row 1" in msg and str(path) in msg


def test_missing_completion_for_sft():
    """SFT data needs `completion`; a preference file given as SFT data says so."""
    with pytest.raises(DataError, match="completion"):
        load_rows([GOOD], "sft")


def test_empty_chosen_is_refused():
    """An empty (or blank) `chosen` raises DataError naming the column and the row."""
    for empty in ("", "   "):
        with pytest.raises(DataError) as err:
            load_rows([GOOD, dict(GOOD, chosen=empty)], "pairs")
        assert "'chosen'" in str(err.value) and "empty" in str(err.value) and "row 1" in str(err.value)


def test_non_string_value_is_refused():
    """A number where text is expected raises DataError naming the column and the type found."""
    with pytest.raises(DataError) as err:
        load_rows([dict(GOOD, rejected=3)], "pairs")
    msg = str(err.value)
    assert "'rejected'" in msg and "string" in msg and "int" in msg and "row 0" in msg


def test_malformed_jsonl_line_names_line_number(tmp_path):
    """A line that is not JSON raises DataError with its (1-based) line number."""
    path = _jsonl(tmp_path, [GOOD, GOOD, '{"prompt": "review the cafe :", "chosen": '])
    with pytest.raises(DataError) as err:
        load_rows(path, "pairs")
    assert "line 3" in str(err.value) and "JSON" in str(err.value)


def test_malformed_json_file_raises_data_error(tmp_path):
    """A .json file that is not valid JSON raises DataError naming the file (not a bare JSONDecodeError)."""
    path = tmp_path / "data.json"
    path.write_text('[{"prompt": "review the cafe :",]')
    with pytest.raises(DataError) as err:
        load_rows(path, "pairs")
    assert str(path) in str(err.value)


def test_json_file_list_and_data_key(tmp_path):
    """A .json file may hold a list of rows or {"data": [...]}; anything else is refused clearly."""
    (tmp_path / "a.json").write_text(json.dumps([GOOD]))
    (tmp_path / "b.json").write_text(json.dumps({"data": [GOOD, GOOD]}))
    (tmp_path / "c.json").write_text(json.dumps({"rows": [GOOD]}))
    assert load_rows(tmp_path / "a.json", "pairs") == [GOOD]
    assert load_rows(tmp_path / "b.json", "pairs") == [GOOD, GOOD]
    with pytest.raises(DataError, match="JSON list"):
        load_rows(tmp_path / "c.json", "pairs")


def test_unsupported_suffix_and_missing_file(tmp_path):
    """A .csv file is refused naming the suffix and the supported ones; a missing file says it does not exist."""
    path = tmp_path / "data.csv"
    path.write_text("prompt,chosen,rejected\na,b,c\n")
    with pytest.raises(DataError) as err:
        load_rows(path, "pairs")
    assert "'.csv'" in str(err.value) and ".jsonl" in str(err.value)
    with pytest.raises(DataError, match="does not exist"):
        load_rows(tmp_path / "nope.jsonl", "pairs")


CHAT_ROW = {"prompt": [{"role": "user", "content": "review the pizza :"}],
            "chosen": [{"role": "assistant", "content": "the pizza was good ."}],
            "rejected": [{"role": "assistant", "content": "the pizza was bad ."}]}
# A chat template whose markers are words of the pocket vocabulary, so every token is known.
POCKET_CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token }}{{ m['content'] }}"
                        "{% else %} {{ m['content'] }}{% endif %}{% endfor %}")


def test_conversational_rows_render_through_the_chat_template(tokenizer):
    """TRL's conversational format: rendered by the chat template, the tokens equal the standard row's."""
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = POCKET_CHAT_TEMPLATE
    (chat,) = tokenize_rows(load_rows([CHAT_ROW], "pairs"), tok, "pairs")
    (text,) = tokenize_rows(load_rows([GOOD], "pairs"), tok, "pairs")
    assert chat.prompt_ids == text.prompt_ids and chat.completions == text.completions
    assert tok.unk_token_id not in chat.prompt_ids + chat.completions[0]


def test_conversational_errors_name_the_problem(tokenizer):
    """No chat template, malformed messages and mixed formats raise DataError with the fix."""
    rows = load_rows([CHAT_ROW], "pairs")
    with pytest.raises(DataError, match="chat template"):
        tokenize_rows(rows, tokenizer, "pairs")
    with pytest.raises(DataError, match="role"):
        load_rows([{**CHAT_ROW, "chosen": [{"content": "good"}]}], "pairs")
    with pytest.raises(DataError, match="empty list of messages"):
        load_rows([{**CHAT_ROW, "rejected": []}], "pairs")
    with pytest.raises(DataError, match="one format per row"):
        load_rows([{**CHAT_ROW, "chosen": "the pizza was good ."}], "pairs")
    with pytest.raises(DataError, match="same text"):
        load_rows([{**CHAT_ROW, "rejected": CHAT_ROW["chosen"]}], "pairs")


def test_empty_data_and_non_object_rows():
    """No rows at all, or a row that is not an object, raise DataError."""
    with pytest.raises(DataError, match="no rows"):
        load_rows([], "pairs")
    with pytest.raises(DataError, match="row 1"):
        load_rows([GOOD, ["review the pizza :", "good", "bad"]], "pairs")


def test_load_from_list_and_from_datasets_dataset():
    """A list of dicts and a `datasets.Dataset` load to the same rows; extra columns are dropped."""
    from datasets import Dataset

    rows = [dict(GOOD, score=1.0), {"prompt": "review the cafe :", "chosen": "it was fun .",
                                    "rejected": "it was dull .", "score": 0.5}]
    expected = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]
    assert load_rows(rows, "pairs") == expected
    assert load_rows(Dataset.from_list(rows), "pairs") == expected
    # and a Dataset missing a column is refused like a list would be
    with pytest.raises(DataError, match="rejected"):
        load_rows(Dataset.from_list([{"prompt": "p", "chosen": "c"}]), "pairs")


def test_load_from_jsonl_file(tmp_path):
    """A valid JSONL file (blank lines allowed) loads row by row."""
    path = _jsonl(tmp_path, [GOOD, "", dict(GOOD, prompt="review the cafe :")])
    rows = load_rows(path, "pairs")
    assert [r["prompt"] for r in rows] == ["review the pizza :", "review the cafe :"]


# ---------------------------------------------------------- tokenising limits
def test_prompt_longer_than_limit_is_refused(tokenizer):
    """Prompts are never truncated: a prompt over max_prompt_length raises DataError naming the row and limit."""
    rows = [GOOD, dict(GOOD, prompt="write a short review of the pizza .")]  # 8 words + BOS = 9 tokens
    tokenize_rows(rows, tokenizer, "pairs", max_prompt_length=9)  # fits exactly
    with pytest.raises(DataError) as err:
        tokenize_rows(rows, tokenizer, "pairs", max_prompt_length=8)
    msg = str(err.value)
    assert "row 1" in msg and "max_prompt_length=8" in msg and "9 tokens" in msg and "truncated" in msg


def test_long_completions_are_truncated_with_a_counting_warning(tokenizer):
    """Completions over max_completion_length are cut to the limit with one UserWarning saying how many."""
    long = "the pizza was good . i loved the pizza ."  # 10 words + EOS = 11 tokens
    rows = [dict(GOOD, chosen=long), dict(GOOD, chosen=long, rejected=long), GOOD]  # 3 long completions
    with pytest.warns(UserWarning, match=r"3 completion\(s\).*max_completion_length=6"):
        out = tokenize_rows(rows, tokenizer, "pairs", max_completion_length=6)
    long_ids = tokenizer(long, add_special_tokens=False)["input_ids"]
    assert out[0].completions[0] == out[1].completions[0] == out[1].completions[1] == long_ids[:6]  # EOS cut off
    # GOOD's completions are 5 words + EOS = 6 tokens: at the limit, kept whole
    assert out[2].completions[0] == tokenizer(GOOD["chosen"], add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id]
    # within the limit: no warning, EOS kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whole = tokenize_rows(rows, tokenizer, "pairs", max_completion_length=11)
    assert whole[0].completions[0][-1] == tokenizer.eos_token_id


def test_prompt_gets_bos_completion_gets_eos(tokenizer):
    """Prompt ids start with BOS; completion ids have no BOS and end with exactly one EOS."""
    (ex,) = tokenize_rows([GOOD], tokenizer, "pairs")
    assert ex.prompt_ids == [tokenizer.bos_token_id] + tokenizer(GOOD["prompt"], add_special_tokens=False)["input_ids"]
    for ids, text in zip(ex.completions, (GOOD["chosen"], GOOD["rejected"])):
        assert ids == tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert tokenizer.bos_token_id not in ids


# ------------------------------------------------------------------ collation
def test_collate_layout():
    """Right padding with the pad id; attention_mask marks real tokens; completion_mask exactly the completion."""
    pad = 0
    rows = [([1, 10, 11], [20, 21, 2]), ([1, 12], [22, 2]), ([1, 13, 14, 15], [2])]
    out = collate(rows, pad)
    assert out["input_ids"].tolist() == [
        [1, 10, 11, 20, 21, 2],
        [1, 12, 22, 2, pad, pad],
        [1, 13, 14, 15, 2, pad],
    ]
    assert out["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
    ]
    assert out["completion_mask"].tolist() == [
        [0, 0, 0, 1, 1, 1],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 0],
    ]
    # a different pad id only changes the pad positions
    other = collate(rows, 99)
    assert torch.equal(other["input_ids"] == 99, out["attention_mask"] == 0)
    assert all(v.dtype == torch.long for v in out.values())


def test_collate_examples_puts_chosen_rows_first(tokenizer):
    """For pairs, rows 0..B−1 are prompt+chosen and rows B..2B−1 prompt+rejected, in example order (TRL's layout)."""
    rows = [GOOD, {"prompt": "review the cafe :", "chosen": "it was fun . i liked the cafe .", "rejected": "it was dull ."},
            {"prompt": "what did you think of the tea ?", "chosen": "i loved the tea .", "rejected": "i hated the tea ."}]
    examples = tokenize_rows(rows, tokenizer, "pairs")
    batch = collate_examples(examples, tokenizer.pad_token_id)
    b = len(rows)
    assert batch["input_ids"].shape[0] == 2 * b
    for i, row in enumerate(rows):
        for k, col in enumerate(("chosen", "rejected")):
            r = k * b + i
            real = batch["input_ids"][r][batch["attention_mask"][r] == 1]
            completion = batch["input_ids"][r][batch["completion_mask"][r] == 1]
            assert tokenizer.decode(real, skip_special_tokens=True) == f"{row['prompt']} {row[col]}"
            assert tokenizer.decode(completion, skip_special_tokens=True) == row[col]
    # SFT examples (one completion each) collate to B rows
    sft = tokenize_rows([{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows], tokenizer, "sft")
    assert collate_examples(sft, tokenizer.pad_token_id)["input_ids"].shape[0] == b


def test_hub_dataset_id_offline_is_a_clear_error(monkeypatch):
    """A `datasets` hub id is accepted as a source; offline it fails with a message naming the fix."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="network access"):
        load_rows("no-such-owner/no-such-dataset:train", "pairs")
