"""Silence known, harmless library noise once, in one place (not in every notebook)."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_known_noise() -> None:
    # filters first: importing transformers below may already trigger some of these
    warnings.filterwarnings("ignore", message=".*Removed shared tensor.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # tqdm.auto in a kernel without ipywidgets falls back to the text bar, which is what the book wants
    warnings.filterwarnings("ignore", message=".*IProgress not found.*")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers' weight-loading / shard-writing progress bars on every tiny save and load
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    # accelerate warns on every save that safetensors dropped the tied lm_head copy, which is expected
    logging.getLogger("accelerate").setLevel(logging.ERROR)
