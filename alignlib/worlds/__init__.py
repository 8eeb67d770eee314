"""Synthetic worlds with programmatic gold judgement; `get_world(name)` builds one."""

from .base import Example, World
from .intransitive import IntransitiveWorld
from .reviews import ReviewsWorld

WORLDS: dict[str, type[World]] = {"reviews": ReviewsWorld, "intransitive": IntransitiveWorld}


def get_world(name: str) -> World:
    """Return a fresh instance of the world called `name`."""
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; valid worlds: {', '.join(sorted(WORLDS))}")
    return WORLDS[name]()


__all__ = ["Example", "World", "ReviewsWorld", "IntransitiveWorld", "WORLDS", "get_world"]
