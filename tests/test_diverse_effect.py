"""Diverse preferences on gold, seeded: single-RM RLHF vs MaxMin per group, and DPA steering by the prompt's vector."""

from __future__ import annotations

import numpy as np
import pytest

from alignlib.diverse import compare_single_and_maxmin, dpa_train, steering_curve
from alignlib.pocket import load_pocket
from alignlib.worlds import get_world

SEEDS = (0, 1)
STEPS = 20


@pytest.fixture(scope="module")
def comparisons(tmp_path_factory):
    out = tmp_path_factory.mktemp("maxmin")
    return [compare_single_and_maxmin(seed, STEPS, str(out), eval_samples=8) for seed in SEEDS]


def test_maxmin_lifts_the_minority_more_than_it_costs_the_majority(comparisons):
    """Must-hold (on gold): on every seed MaxMin's casual-group (20%) reward beats single-RM's and its worst-off
    group is better off; averaged over the seeds the minority gains more than the formal group (80%) loses. The
    single RM serves the majority (its formal fraction rises from SFT's)."""
    gains, losses = [], []
    for r in comparisons:
        gain = r["maxmin"]["casual"] - r["single"]["casual"]
        loss = r["single"]["formal"] - r["maxmin"]["formal"]
        gains.append(gain)
        losses.append(loss)
        print(f"seed {r['seed']}: EM acc {r['em_accuracy']:.3f}; SFT {r['sft']}; single {r['single']}; "
              f"maxmin {r['maxmin']}; minority gain {gain:.3f}, majority loss {loss:.3f}")
        assert r["em_accuracy"] >= 0.95
        assert r["single"]["formal_fraction"] > r["sft"]["formal_fraction"] + 0.1
        assert gain > 0.2
        assert min(r["maxmin"]["formal"], r["maxmin"]["casual"]) > min(r["single"]["formal"], r["single"]["casual"])
    assert np.mean(gains) > np.mean(losses)


def test_dpa_direction_in_the_prompt_steers_the_two_attributes(tmp_path):
    """Must-hold: after preference-conditioned RSF, rotating v from formal (0°) to casual (90°) lowers formality
    and raises casualness monotonically, on samples of the held-out prompts."""
    world = get_world("two_populations")
    model, tok = load_pocket("two_populations")
    model = dpa_train(model, tok, world, world.attributes, list(range(0, 91, 15)), iterations=1,
                      prompts_per_iter=256, k=8, sft_steps=120, output_dir=str(tmp_path), seed=0, learning_rate=3e-3,
                      batch_size=32)
    curve = steering_curve(model, tok, world, [0, 45, 90], world.prompts("eval"), 16, seed=5)
    formality, casualness = [c["formality"] for c in curve], [c["casualness"] for c in curve]
    print("DPA steering:", [{k: round(v, 3) for k, v in c.items()} for c in curve])
    assert (np.diff(formality) < 0).all() and (np.diff(casualness) > 0).all()
    assert formality[0] - formality[-1] > 0.15 and casualness[-1] - casualness[0] > 0.15
