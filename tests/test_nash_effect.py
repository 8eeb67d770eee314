"""The chapter's headline on gold judgement: on the intransitive world, self-play methods that see the
whole preference end less exploitable than a Bradley–Terry method (three seeds, small scale).

Exploitability (max over answers of the gold win rate against the policy, minus ½) is exact in this
world (`IntransitiveWorld.exploitability`), here on 4 samples per eval prompt. Configuration: DPO on
256 oracle-labelled SFT pairs, 30 steps (the BT method); Nash-MD-PG at mixture coefficient 0 (self-play
with a KL penalty, β = 0.05), 40 steps; SPPO with η = 5, 3 rounds of 12 steps; learning rate 5e-4,
8 prompts a step. One measured run of exactly this (CPU, 2026-11-27) gave

    SFT 0.149;  DPO (BT) 0.284 0.236 0.236;  Nash-MD 0.188 0.202 0.131;  SPPO 0.163 0.106 0.121

for seeds 0, 1, 2. The threshold T = 0.21 and the margins below are set from those numbers, with room
for platform-level numerical differences; they are not tuned per seed. At this scale neither Nash
method reliably gets *below the SFT policy* (Nash-MD's seed mean is above it), so that is not asserted.
DNO is not in this test because in the chapter's full run it did not beat the BT baseline; INPO did
there, but only in its later rounds, and is left out to keep this test within its time budget
(see chapters/05_nash.ipynb).
"""

from __future__ import annotations

import statistics

import pytest

from alignlib.config import TrainConfig
from alignlib.loop import train
from alignlib.models import frozen_copy
from alignlib.rollout import sample, world_dataset
from alignlib.selfplay import iterate
from alignlib.worlds import get_world

SEEDS = (0, 1, 2)
LR = 5e-4
BASE = {"world": "intransitive", "learning_rate": LR, "per_device_train_batch_size": 8, "samples_per_prompt": 4,
        "max_new_tokens": 32, "save_steps": 0, "progress": False, "logging_steps": 0, "num_examples": 256}


@pytest.fixture(scope="module")
def world():
    return get_world("intransitive")


@pytest.fixture(scope="module")
def pocket():
    from alignlib.pocket import load_pocket

    return load_pocket("intransitive")


def exploitability(world, model, tok) -> float:
    prompts = world.prompts("eval") * 4
    return world.exploitability(prompts, sample(model, tok, prompts, max_new_tokens=32, seed=99).texts)


def run(tmp_path, pocket, method, seed, steps, iterations=1, **kw):
    model, tok = pocket
    cfg = TrainConfig(method=method, output_dir=str(tmp_path / f"{method}-{seed}"), seed=seed, max_steps=steps,
                      **BASE, **kw)
    policy = frozen_copy(model).train().requires_grad_(True)
    if iterations > 1:
        return iterate(cfg, model=policy, tokenizer=tok, iterations=iterations)[-1].model
    dataset = world_dataset(cfg, "pairs", model, tok) if method == "dpo" else None
    return train(cfg, model=policy, tokenizer=tok, dataset=dataset).model


@pytest.fixture(scope="module")
def measured(tmp_path_factory, pocket, world):
    tmp = tmp_path_factory.mktemp("nash_effect")
    tok = pocket[1]
    out = {"sft": exploitability(world, pocket[0], tok)}
    for seed in SEEDS:
        out["dpo", seed] = exploitability(world, run(tmp, pocket, "dpo", seed, 30, beta=0.1), tok)
        out["nash_md", seed] = exploitability(world, run(tmp, pocket, "nash_md", seed, 40, beta=0.05,
                                                         mixture_coef=0.0), tok)
        out["sppo", seed] = exploitability(world, run(tmp, pocket, "sppo", seed, 12, iterations=3, eta=5.0), tok)
    print({k: round(v, 3) for k, v in out.items()})
    return out


THRESHOLD = 0.21


def test_two_nash_methods_end_below_threshold_while_bt_stays_above(measured):
    """Nash-MD's and SPPO's seed means end below T, DPO (BT) stays above T + 0.01 on every seed."""
    for method in ("nash_md", "sppo"):
        assert statistics.mean(measured[method, s] for s in SEEDS) < THRESHOLD, method
    assert min(measured["dpo", s] for s in SEEDS) > THRESHOLD + 0.01


def test_nash_methods_beat_bt_and_bt_is_worse_than_sft(measured):
    """Both Nash methods end at least 0.05 less exploitable than DPO on average; DPO's Bradley–Terry fit
    of a cycle makes the policy *more* exploitable than where it started (SFT) by at least 0.05."""
    dpo = statistics.mean(measured["dpo", s] for s in SEEDS)
    for method in ("nash_md", "sppo"):
        assert statistics.mean(measured[method, s] for s in SEEDS) < dpo - 0.05, method
    assert dpo > measured["sft"] + 0.05
