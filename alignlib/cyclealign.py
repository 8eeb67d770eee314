"""CycleAlign's agreement ranking and the list rows it trains on (book chapter 7, sec-ch7-cyclealign).

CycleAlign (Hong et al. 2023) distils a black-box judge into a white-box policy in cycles:
the policy samples K responses per prompt, the black box ranks them, the white box ranks
them by its own likelihood, and the ranking the two *agree* on is the pseudo-label that
trains the policy with a ranking loss (PRO plus SFT on the top response). Our reading of
"agreement" is the longest common subsequence (LCS) of the two rankings: the longest
ordering of responses that both rankers put in the same relative order. The rest of a cycle
(sampling, scoring, one `alignlib.train` call with `method="listwise"`) lives in the chapter;
this module only holds the pure pieces, so there is no trainer here.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence


def order_by(scores: Sequence[float]) -> list[int]:
    """Return the indices of `scores` from best (highest) to worst; equal scores keep their index order."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def _check_orders(black_order: Sequence[Hashable], white_order: Sequence[Hashable]) -> None:
    for name, order in (("black_order", black_order), ("white_order", white_order)):
        if len(set(order)) != len(order):
            raise ValueError(f"{name} has repeated items {list(order)}; a ranking lists every item once")
    if set(black_order) != set(white_order):
        raise ValueError(f"the two rankings must order the same items: black_order has {sorted(map(str, black_order))}, "
                         f"white_order has {sorted(map(str, white_order))}; rank the same K responses in both")


def agreement_ranking(black_order: Sequence[Hashable], white_order: Sequence[Hashable]) -> list:
    """Return the longest common subsequence of two rankings of the same items, best first.

    black_order, white_order: the same K distinct items (e.g. response indices), each listed
    from best to worst by one ranker. The result lists the items that both rankers place in
    the same relative order, as long as possible: identical rankings give the whole list,
    reversed ones a single item. Among several longest subsequences the one found by the
    standard O(K²) dynamic programme, backtracking with ties broken towards black_order's
    earlier items, is returned (deterministic). CycleAlign (Hong et al. 2023) uses the
    agreement of the black-box and white-box rankings as its pseudo-label; reading it as the
    LCS is ours (sec-ch7-cyclealign). Raises ValueError when an order repeats an item or the
    two orders rank different items.
    """
    _check_orders(black_order, white_order)
    a, b = list(black_order), list(white_order)
    n = len(a)
    # length[i][j] = LCS length of a[i:] and b[j:]
    length = [[0] * (n + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(n - 1, -1, -1):
            length[i][j] = length[i + 1][j + 1] + 1 if a[i] == b[j] else max(length[i + 1][j], length[i][j + 1])
    out, i, j = [], 0, 0
    while i < n and j < n:
        if a[i] == b[j]:
            out.append(a[i])
            i, j = i + 1, j + 1
        elif length[i][j + 1] >= length[i + 1][j]:  # skipping white's item keeps black's earlier one in play
            j += 1
        else:
            i += 1
    return out


def _spread(items: list, size: int) -> list:
    """Return `size` items of `items` at evenly spaced positions, first and last included."""
    if size == 1:
        return items[:1]
    last = len(items) - 1
    return [items[round(t * last / (size - 1))] for t in range(size)]


def agreement_rows(prompts: Sequence[str], completions: Sequence[Sequence[str]],
                   black_scores: Sequence[Sequence[float]], white_scores: Sequence[Sequence[float]],
                   size: int | None = None) -> tuple[list[dict], int]:
    """Return (list rows labelled by the agreement ranking, number of prompts dropped).

    For prompt b, completions[b] are its K responses, black_scores[b] and white_scores[b]
    the two rankers' scores of them (higher = better, e.g. a noisy judge and the policy's mean
    token log-prob). The row keeps only the agreed subsequence (`agreement_ranking` of the
    two score orders), in agreed order, with descending scores L−1, …, 0 (L its length):
    {"prompt", "completions", "scores"}, the format of `alignlib.lists`. `size`: cut every
    row to this many completions, evenly spread over the agreed order with its best and worst
    kept, since a listwise batch needs one K; None keeps each agreed subsequence whole.
    Prompts whose agreement is shorter than max(2, size) carry no ranking and are dropped
    (counted). Passing white_scores = black_scores gives the black box's own ranking, the
    baseline without agreement. Raises ValueError on mismatched lengths or size < 2.
    """
    if size is not None and size < 2:
        raise ValueError(f"size must be ≥ 2 (a ranking needs two completions) or None, got {size}")
    if not len(prompts) == len(completions) == len(black_scores) == len(white_scores):
        raise ValueError(f"prompts, completions, black_scores and white_scores must have one entry per prompt; got "
                         f"{len(prompts)}, {len(completions)}, {len(black_scores)}, {len(white_scores)}")
    rows, dropped = [], 0
    for b, (prompt, texts, black, white) in enumerate(zip(prompts, completions, black_scores, white_scores)):
        if not len(texts) == len(black) == len(white):
            raise ValueError(f"prompt {b}: {len(texts)} completions but {len(black)} black-box and {len(white)} "
                             "white-box scores; give one score per completion from each ranker")
        agreed = agreement_ranking(order_by(black), order_by(white))
        if len(agreed) < max(2, size or 2):
            dropped += 1
            continue
        if size is not None:
            agreed = _spread(agreed, size)
        n = len(agreed)
        rows.append({"prompt": prompt, "completions": [texts[i] for i in agreed],
                     "scores": [float(n - 1 - r) for r in range(n)]})
    return rows, dropped
