"""Ranking accuracy and its idealised value (METHODS.md §3.15): limits and hand-checked cases."""

from __future__ import annotations

import pytest
import torch

from alignlib.diagnostics import idealised_ranking_accuracy, ranking_accuracy


def test_ranking_accuracy_counts_agreement_and_skips_gold_ties():
    a = torch.tensor([-1.0, -3.0, -2.0, -5.0])
    b = torch.tensor([-2.0, -1.0, -2.5, -4.0])
    truth = [1.0, 0.0, 0.5, 1.0]  # a better, b better, tie (skipped), a better
    assert ranking_accuracy(a, b, truth) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="tie"):
        ranking_accuracy(a, b, [0.5] * 4)


def test_idealised_accuracy_limits():
    """β → 0: every non-tied pair ranked right; β → ∞: the reference's own ranking accuracy."""
    g = torch.Generator().manual_seed(0)
    ref_a, ref_b = torch.randn(500, generator=g), torch.randn(500, generator=g)
    gap = torch.randn(500, generator=g)
    truth = (gap > 0).float()
    assert idealised_ranking_accuracy(ref_a, ref_b, gap, 1e-6, truth) == 1.0
    far = idealised_ranking_accuracy(ref_a, ref_b, gap, 1e9, truth, tie_ratio=1.0 + 1e-9)
    assert far == pytest.approx(ranking_accuracy(ref_a, ref_b, truth))
    assert 0.4 < far < 0.6  # an uninformative reference: the limit is not trivially 1
    mid = idealised_ranking_accuracy(ref_a, ref_b, gap, 1.0, truth)
    assert far < mid < 1.0


def test_idealised_ties_count_as_wrong_and_beta_must_be_positive():
    ref = torch.tensor([0.0])
    assert idealised_ranking_accuracy(ref, ref, torch.tensor([0.01]), 1.0, [1.0]) == 0.0  # ratio 1.01 < 1.05
    assert idealised_ranking_accuracy(ref, ref, torch.tensor([0.1]), 1.0, [1.0]) == 1.0
    with pytest.raises(ValueError, match="beta"):
        idealised_ranking_accuracy(ref, ref, torch.tensor([0.1]), 0.0, [1.0])
