"""CycleAlign's agreement ranking (LCS of two rankings) and the list rows built from it (chapter 7).

The effect of training on the agreement ranking is not asserted: in the chapter's full run it
is not large and consistent over two seeds (see sec-ch7-cyclealign), so these tests check the
pieces only.
"""

from __future__ import annotations

import itertools
import random

import pytest

from alignlib.cyclealign import agreement_ranking, agreement_rows, order_by
from alignlib.lists import load_list_rows


def _is_subsequence(short, long) -> bool:
    it = iter(long)
    return all(x in it for x in short)


def _lcs_length_brute(a, b) -> int:
    """Length of the longest common subsequence by trying every subset of a (small K only)."""
    for n in range(len(a), 0, -1):
        for sub in itertools.combinations(a, n):
            if _is_subsequence(sub, b):
                return n
    return 0


def test_identical_rankings_agree_on_everything():
    for k in range(1, 8):
        order = random.Random(k).sample(range(k), k)
        assert agreement_ranking(order, order) == order


def test_reversed_rankings_agree_on_one_item():
    for k in range(1, 8):
        order = list(range(k))
        assert len(agreement_ranking(order, order[::-1])) == 1


def test_agreement_is_a_longest_common_subsequence():
    rng = random.Random(0)
    for _ in range(300):
        k = rng.randint(1, 7)
        a, b = rng.sample(range(k), k), rng.sample(range(k), k)
        agreed = agreement_ranking(a, b)
        assert _is_subsequence(agreed, a) and _is_subsequence(agreed, b)
        assert len(agreed) == _lcs_length_brute(a, b)
        assert agreement_ranking(a, b) == agreed  # deterministic


def test_agreement_works_on_any_hashable_items():
    assert agreement_ranking(["x", "y", "z"], ["y", "x", "z"]) in (["x", "z"], ["y", "z"])


@pytest.mark.parametrize("a, b, match", [([0, 1, 1], [0, 1, 1], "repeated"), ([0, 1, 2], [0, 1, 3], "same items")])
def test_bad_orders_are_refused(a, b, match):
    with pytest.raises(ValueError, match=match):
        agreement_ranking(a, b)


def test_order_by_is_best_first_and_stable():
    assert order_by([0.1, 0.9, 0.5, 0.9]) == [1, 3, 2, 0]


def test_rows_keep_the_agreed_subsequence_in_order():
    texts = ["a", "b", "c", "d"]
    black = [4.0, 3.0, 2.0, 1.0]         # a > b > c > d
    white = [1.0, 3.0, 2.0, 4.0]         # d > b > c > a: agreement is b > c
    rows, dropped = agreement_rows(["p"], [texts], [black], [white])
    assert dropped == 0
    assert rows == [{"prompt": "p", "completions": ["b", "c"], "scores": [1.0, 0.0]}]
    # the black box's own ranking is the agreement of the black box with itself
    rows, _ = agreement_rows(["p"], [texts], [black], [black])
    assert rows[0]["completions"] == texts and rows[0]["scores"] == [3.0, 2.0, 1.0, 0.0]


def test_rows_are_cut_to_size_keeping_best_and_worst_and_short_lists_are_dropped():
    texts = [["a", "b", "c", "d"], ["e", "f", "g", "h"]]
    black = [[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0]]
    white = [[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]]   # second prompt: reversed, agreement of one item
    rows, dropped = agreement_rows(["p", "q"], texts, black, white, size=2)
    assert dropped == 1
    assert rows == [{"prompt": "p", "completions": ["a", "d"], "scores": [1.0, 0.0]}]
    rows, dropped = agreement_rows(["p"], texts[:1], black[:1], white[:1], size=3)
    assert rows[0]["completions"] == ["a", "c", "d"] and dropped == 0
    kept, skipped = load_list_rows(rows)   # the rows are valid listwise data
    assert len(kept) == 1 and not any(skipped.values())


def test_row_building_refuses_bad_input():
    with pytest.raises(ValueError, match="size must be"):
        agreement_rows(["p"], [["a", "b"]], [[1.0, 0.0]], [[1.0, 0.0]], size=1)
    with pytest.raises(ValueError, match="one entry per prompt"):
        agreement_rows(["p", "q"], [["a", "b"]], [[1.0, 0.0]], [[1.0, 0.0]])
    with pytest.raises(ValueError, match="one score per completion"):
        agreement_rows(["p"], [["a", "b"]], [[1.0, 0.0, 2.0]], [[1.0, 0.0]])
