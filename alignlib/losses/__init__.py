"""Pure loss functions, one module per method family."""

from .pairwise import dpo_loss
from .sft import sft_loss

__all__ = ["dpo_loss", "sft_loss"]
