"""`alignlib.logprobs`: sequence log-probabilities with masks (METHODS.md §0).

ℓ(y) = Σ_t m_t log π(y_t | x, y_<t) over completion tokens only; padding and
prompt tokens contribute nothing, and right padding does not change a row's value.
"""

from __future__ import annotations

import pytest
import torch

from alignlib.data import collate, tokenize_rows
from alignlib.logprobs import sequence_logprobs, token_logprobs


@pytest.fixture(scope="module")
def rows(pocket_reviews, reviews_world):
    """(prompt_ids, completion_ids) of SFT examples of different lengths (so a batch needs padding)."""
    _, tokenizer = pocket_reviews
    data = [{"prompt": ex.prompt, "completion": ex.completion} for ex in reviews_world.sft_examples(8, seed=11)]
    pairs = [(ex.prompt_ids, ex.completions[0]) for ex in tokenize_rows(data, tokenizer, "sft")]
    lengths = {len(p) + len(c) for p, c in pairs}
    assert len(lengths) >= 3, "want rows of several lengths"
    return pairs


def _logps(model, batch):
    with torch.no_grad():
        return sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])


def _naive_logp(model, prompt_ids: list[int], completion_ids: list[int]) -> float:
    """log π(y | x) the slow way: one forward pass on the unpadded row (no attention mask), then a Python
    loop over completion tokens, each a full log_softmax in float64 of the previous position's logits."""
    ids = prompt_ids + completion_ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    total = 0.0
    for t in range(len(prompt_ids), len(ids)):
        total += torch.log_softmax(logits[t - 1], -1)[ids[t]].item()
    return total


def test_token_logprobs_is_log_softmax_gather():
    """token_logprobs(logits, ids)[b, t] = log_softmax(logits[b, t])[ids[b, t+1]] (shape [B, T−1])."""
    g = torch.Generator().manual_seed(0)
    logits = 5 * torch.randn(3, 7, 11, generator=g)
    ids = torch.randint(11, (3, 7), generator=g)
    out = token_logprobs(logits, ids)
    assert out.shape == (3, 6)
    expected = torch.log_softmax(logits.double(), -1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)


def test_padded_batch_equals_each_row_alone(pocket_reviews, rows):
    """A row's ℓ(y) is the same (≤ 1e-5) alone and unpadded as inside a right-padded batch with longer rows."""
    model, tokenizer = pocket_reviews
    batch = collate(rows, tokenizer.pad_token_id)
    assert (batch["attention_mask"] == 0).any()
    batched, _, _ = _logps(model, batch)
    for i, row in enumerate(rows):
        single = collate([row], tokenizer.pad_token_id)
        assert single["attention_mask"].all()  # alone: no padding at all
        alone, _, _ = _logps(model, single)
        assert abs(alone.item() - batched[i].item()) <= 1e-5, (i, alone.item(), batched[i].item())


def test_sequence_logprobs_equals_naive_token_loop(pocket_reviews, rows):
    """ℓ(y) from one batched pass equals a token-by-token loop of log_softmax over unpadded prefixes."""
    model, tokenizer = pocket_reviews
    batched, _, _ = _logps(model, collate(rows, tokenizer.pad_token_id))
    for i, (p, c) in enumerate(rows):
        naive = _naive_logp(model, p, c)
        assert naive < -1e-3  # a real, non-trivial log-probability
        assert abs(batched[i].item() - naive) <= 1e-5, (i, batched[i].item(), naive)


def test_prompt_and_pad_positions_contribute_nothing(pocket_reviews, rows):
    """Masked token log-probs are exactly 0 at prompt and pad positions, the mask is completion_mask[:, 1:],
    and ℓ(y) is the sum over the completion only; counting the prompt too would give a different value."""
    model, tokenizer = pocket_reviews
    batch = collate(rows, tokenizer.pad_token_id)
    seq, token_lp, mask = _logps(model, batch)
    assert token_lp.shape == mask.shape == (len(rows), batch["input_ids"].shape[1] - 1)
    torch.testing.assert_close(mask, batch["completion_mask"][:, 1:].float())
    assert (token_lp[mask == 0] == 0).all()
    assert (token_lp[mask == 1] < 0).all()
    torch.testing.assert_close(seq, token_lp.sum(-1))
    # control: with the prompt tokens (after BOS) counted too, every row's value drops
    prompt_too, _, _ = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["attention_mask"])
    assert (prompt_too < seq - 1e-3).all()


def test_pad_token_value_changes_nothing(pocket_reviews, rows):
    """Replacing the ids at pad positions by other tokens leaves ℓ(y) unchanged."""
    model, tokenizer = pocket_reviews
    batch = collate(rows, tokenizer.pad_token_id)
    base, _, _ = _logps(model, batch)
    pads = batch["attention_mask"] == 0
    for fill in (tokenizer.eos_token_id, tokenizer.bos_token_id, len(tokenizer) - 1):
        other = dict(batch, input_ids=batch["input_ids"].masked_fill(pads, fill))
        assert not torch.equal(other["input_ids"], batch["input_ids"])
        changed, _, _ = _logps(model, other)
        torch.testing.assert_close(changed, base, rtol=0, atol=1e-6)
    # also collating with a different pad id gives the same values
    relabelled, _, _ = _logps(model, collate(rows, tokenizer.eos_token_id))
    torch.testing.assert_close(relabelled, base, rtol=0, atol=1e-6)
