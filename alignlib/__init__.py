"""alignlib: a small, readable library for aligning language models, and the code of the textbook.

The pieces a reader uses most are re-exported here; each lives in a module named for its job.
"""

from ._quiet import quiet_known_noise
from .config import TrainConfig

quiet_known_noise()

__version__ = "0.1.0"


def __getattr__(name):  # lazy: `import alignlib` does not import torch-heavy modules until used
    lazy = {
        "train": ("loop", "train"), "TrainResult": ("loop", "TrainResult"),
        "load_pocket": ("pocket", "load_pocket"), "get_world": ("worlds", "get_world"),
        "evaluate_policy": ("evaluate", "evaluate_policy"), "sample": ("rollout", "sample"),
        "best_of_n": ("rollout", "best_of_n"),
    }
    if name in lazy:
        import importlib

        module, attr = lazy[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(name)


__all__ = ["TrainConfig", "train", "TrainResult", "load_pocket", "get_world", "evaluate_policy", "sample",
           "best_of_n", "smoke_mode", "__version__"]


def smoke_mode() -> bool:
    """Return True when ALIGNLIB_SMOKE is set to a true value: notebooks then run their small, fast variant."""
    import os

    return os.environ.get("ALIGNLIB_SMOKE", "").strip().lower() in ("1", "true", "yes", "on")
