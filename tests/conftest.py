"""Shared fixtures: the reviews world and its pocket model, built once per test session."""

from __future__ import annotations

import os

import pytest

# The suite must pass with no network: any attempt to reach the Hugging Face Hub fails loudly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def reviews_world():
    from alignlib.worlds import get_world

    return get_world("reviews")


@pytest.fixture(scope="session")
def pocket_reviews():
    """(model, tokenizer) of the SFT pocket model (built into the cache on first use)."""
    from alignlib.pocket import load_pocket

    return load_pocket("reviews")


@pytest.fixture
def interrupt_and_resume(monkeypatch):
    """Return run(config, method, at_call, **train_kwargs) → TrainResult: `train` is interrupted by a
    KeyboardInterrupt raised inside the method's step at its `at_call`-th call (1-based), then `train`
    is called again with the same arguments and resumes from the latest checkpoint.

    Compare the result with an uninterrupted run: resume must be exact.
    """
    import dataclasses

    from alignlib import methods
    from alignlib.loop import train

    def run(config, method: str, at_call: int, **train_kwargs):
        original, calls = methods.METHODS[method], []

        def interrupting_step(ctx, batch):
            calls.append(1)
            if len(calls) == at_call:
                raise KeyboardInterrupt
            return original.step(ctx, batch)

        with monkeypatch.context() as m:
            m.setitem(methods.METHODS, method, dataclasses.replace(original, step=interrupting_step))
            with pytest.raises(KeyboardInterrupt):
                train(config, **train_kwargs)
        assert methods.METHODS[method] is original and len(calls) == at_call
        return train(config, **train_kwargs)

    return run
