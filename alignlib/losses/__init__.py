"""Pure loss functions, one module per method family.

    pairwise   the DPO family (PAIRWISE_LOSSES: name → loss over sequence log-probs)
    reward     Bradley–Terry reward models, ensembles, preference strength
    ppo        PPO for LMs and the critic-free family (RLOO, GRPO), RAFT, SuperHF, P3O
    sft        token-averaged negative log-likelihood
"""

from . import pairwise, ppo, reward
from .pairwise import PAIRWISE_LOSSES, dpo_loss
from .reward import bradley_terry_loss, ensemble_reward, preference_strength
from .sft import sft_loss

__all__ = ["PAIRWISE_LOSSES", "dpo_loss", "sft_loss", "bradley_terry_loss", "ensemble_reward", "preference_strength",
           "pairwise", "ppo", "reward"]
