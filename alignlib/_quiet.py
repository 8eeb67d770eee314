"""Silence known, harmless library noise once, in one place (not in every notebook)."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_known_noise() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers' weight-loading / shard-writing progress bars on every tiny save and load
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    # tied embeddings: safetensors drops the duplicate lm_head on save, which is expected
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*Removed shared tensor.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
