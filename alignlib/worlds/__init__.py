"""Synthetic worlds with programmatic gold judgement; `get_world(name)` builds one."""

from .base import Example, World
from .constrained import ConstrainedWorld
from .intransitive import IntransitiveWorld
from .reviews import ReviewsWorld
from .tutor import TutorWorld
from .two_populations import TwoPopulationsWorld

WORLDS: dict[str, type[World]] = {"reviews": ReviewsWorld, "intransitive": IntransitiveWorld,
                                  "constrained": ConstrainedWorld, "tutor": TutorWorld}
WORLDS["two_populations"] = TwoPopulationsWorld


def get_world(name: str) -> World:
    """Return a fresh instance of the world called `name`."""
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; valid worlds: {', '.join(sorted(WORLDS))}")
    return WORLDS[name]()


__all__ = ["Example", "World", "ReviewsWorld", "IntransitiveWorld", "ConstrainedWorld", "TutorWorld", "TwoPopulationsWorld", "WORLDS", "get_world"]
