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
