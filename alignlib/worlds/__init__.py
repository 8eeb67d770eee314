"""Synthetic worlds with programmatic gold judgement; `get_world(name)` builds one."""

from .base import Example, World
from .reviews import ReviewsWorld

WORLDS: dict[str, type[World]] = {"reviews": ReviewsWorld}


def get_world(name: str) -> World:
    """Return a fresh instance of the world called `name`."""
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; valid worlds: {', '.join(sorted(WORLDS))}")
    return WORLDS[name]()


__all__ = ["Example", "World", "ReviewsWorld", "WORLDS", "get_world"]
