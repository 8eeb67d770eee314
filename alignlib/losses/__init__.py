"""Pure loss functions, one module per method family."""

from .pairwise import dpo_loss
from .reward import bradley_terry_loss, ensemble_reward, preference_strength
from .sft import sft_loss

__all__ = ["dpo_loss", "sft_loss", "bradley_terry_loss", "ensemble_reward", "preference_strength"]
