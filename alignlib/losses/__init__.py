"""Pure loss functions, one module per method family.

    pairwise   the DPO family (PAIRWISE_LOSSES: name → loss over sequence log-probs)
    reward     Bradley–Terry reward models, ensembles, preference strength
    ppo        PPO for LMs: KL-shaped rewards, GAE, clipped losses, KL controllers
    group      critic-free RLOO and GRPO; RAFT, SuperHF, P3O, policy filtration
    listwise   ranked lists: ListMLE, ListNet, LiPO-λ, PRO (LISTWISE_LOSSES)
    nash       general preferences: Nash-MD, SPPO, DNO, INPO
    sft        token-averaged negative log-likelihood
    feedback   language feedback: CUT's contrastive unlikelihood, hindsight flags
    offline_pg offline policy gradient on scored samples: A-LoL
    fdpg       f-DPG: any f-divergence to a target distribution (reverse/forward KL, JS, TV)
"""

from . import group, listwise, nash, pairwise, ppo, reward
from .listwise import LISTWISE_LOSSES
from .pairwise import PAIRWISE_LOSSES, dpo_loss
from .reward import bradley_terry_loss, ensemble_reward, preference_strength
from .sft import sft_loss
from . import feedback
from .feedback import cut_loss
from . import offline_pg
from . import fdpg

__all__ = ["PAIRWISE_LOSSES", "LISTWISE_LOSSES", "dpo_loss", "sft_loss", "bradley_terry_loss", "ensemble_reward", "preference_strength",
           "pairwise", "ppo", "group", "listwise", "nash", "reward", "feedback", "cut_loss", "offline_pg", "fdpg"]
