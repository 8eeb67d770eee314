"""PPO for language models: KL-shaped rewards, GAE, clipped policy and value losses, KL controllers.

The critic-free family (RLOO, GRPO) and the sampling-based baselines (RAFT,
SuperHF, P3O, policy filtration) live in `alignlib.losses.group`.

Every function is pure: tensors in, tensors (and, for losses, a dict of python
floats named as TRL names them) out. No model calls, no I/O.

Shapes. Token-level tensors are [B, T] over the completion only, with a
`mask` [B, T] that is 1 on completion tokens that are actions and 0 on
padding; masks are right-padded (1…1 0…0) unless a docstring says otherwise.
Sequence-level tensors are [B]. Grouped tensors hold k samples per prompt,
prompt-major and contiguous: rows [g·k, (g+1)·k) belong to prompt g (TRL's
`view(-1, num_generations)` layout).

Log-ratio convention (TRL's PPO trainer): log r_t = lp_ref[t] − lp_θ[t], i.e.
r = π_ref/π_θ evaluated on a token sampled from π_θ.
"""

from __future__ import annotations

import math

import torch

# --------------------------------------------------------------------------- masked statistics


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Return Σ m·x / Σ m over `dim` (all elements if None); the PPO 'per token over the batch' mean."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Return the masked variance over all elements (Bessel-corrected if `unbiased`, as TRL's PPO did)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            raise ValueError("masked_var needs at least 2 unmasked elements for the unbiased variance")
        var = var * n / (n - 1)
    return var


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Return masked-whitened values [B, T]: (x − μ)/√(σ² + eps), zero on padding.

    (Chapter 3 describes it in words, under (eq-ppo-clip) and in its ablation.)
    μ, σ² are the masked mean and unbiased variance over the whole batch. With
    `shift_mean=False` the mean is added back, (x − μ)/σ + μ: only the spread is
    rescaled. That is TRL's `masked_whiten(..., shift_mean=False)`, used on the
    token rewards when `whiten_rewards=True` (divided by the std, not re-centred);
    advantages are whitened with the shift (TRL's PPO trainer; PPO-max, Zheng et al. 2023).
    """
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(values.dtype)


# --------------------------------------------------------------------------- KL-shaped token rewards

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Return a per-token estimate of KL(π_θ ‖ π_ref), same shape as the inputs.

    With log r = lp_ref − lp_θ (r = π_ref/π_θ on a token sampled from π_θ),
    Schulman's estimators ("Approximating KL divergence", 2020; chapter 3: k1 is kl_t of
    (eq-ppo-reward), and k3 is given in words beside it) are

        k1 = −log r                 unbiased, can be negative per token
        k2 = ½ (log r)²             biased, low variance, ≥ 0
        k3 = (r − 1) − log r        unbiased, ≥ 0 (since e^u ≥ 1 + u)

    k1 is TRL's PPO default (`kl_estimator="k1"` in its PPOConfig); k3 is what
    GRPOTrainer puts in its loss. Padding is not masked here: multiply by the mask.
    """
    log_r = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r**2
    if estimator == "k3":
        return torch.expm1(log_r) - log_r  # expm1 keeps k3 ≥ 0 exactly near log r = 0
    raise ValueError(f"unknown KL estimator {estimator!r}; use one of {KL_ESTIMATORS}")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Return the index [B] of the last 1 in each row of `mask` [B, T]; raise if a row is all zero."""
    has_token = mask.bool().any(-1)
    if not bool(has_token.all()):
        rows = torch.nonzero(~has_token).flatten().tolist()
        raise ValueError(f"mask rows {rows} have no completion token; drop empty completions before PPO "
                         "(they carry no action to reward)")
    T = mask.shape[-1]
    return T - 1 - mask.bool().flip(-1).int().argmax(-1)


def token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float = 0.05,
    estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (rewards [B, T], kl [B, T]): the KL-penalised token reward of InstructGPT/TRL PPO.

        r_t = −β · kl_t · m_t  +  1[t = t_end] · score(x, y)                        (eq-ppo-reward)

    `logprobs` are the rollout (old) policy's, `scores` [B] the reward model's;
    t_end is the last token with m_t = 1. Default β = 0.05, k1: TRL's PPOConfig
    defaults. Summed over t with k1 this telescopes to score − β·ρ_old(y),
    the sequence-level penalty of the bandit form.
    """
    if scores.shape != mask.shape[:1]:
        raise ValueError(f"scores must be [B]={tuple(mask.shape[:1])}, got {tuple(scores.shape)}")
    kl = kl_penalty(logprobs, ref_logprobs, estimator) * mask.to(logprobs.dtype)
    rewards = -kl_coef * kl
    last = last_token_index(mask)
    rewards = rewards.clone()
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores.to(rewards.dtype)
    return rewards, kl


class RunningMeanStd:
    """Running mean and std of a scalar stream (PPO-max reward scaling; Zheng et al. 2023, MOSS-RLHF).

    Merges batches with Chan et al.'s parallel update, so the result equals the
    mean and (Bessel-corrected) std of everything seen so far. `state_dict`
    round-trips through `torch.save` for checkpointing.
    """

    def __init__(self, eps: float = 1e-8):
        self.eps = eps  # guards the std of a constant stream (which is 0)
        self.mean, self.m2, self.count = 0.0, 0.0, 0

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().flatten()
        n = x.numel()
        if n == 0:
            return
        b_mean = x.mean().item()
        b_m2 = ((x - b_mean) ** 2).sum().item()
        total = self.count + n
        delta = b_mean - self.mean
        self.mean += delta * n / total
        self.m2 += b_m2 + delta**2 * self.count * n / total
        self.count = total

    def normalize(self, x: torch.Tensor, subtract_mean: bool = True) -> torch.Tensor:
        """Return (x − μ)/σ with `subtract_mean` (`use_reward_norm`), else x/σ (`use_reward_scaling`)."""
        centred = x - self.mean if subtract_mean else x
        return centred / (self.std + self.eps)

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "m2": self.m2, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.m2, self.count = float(state["mean"]), float(state["m2"]), int(state["count"])


def clip_rewards(scores: torch.Tensor, reward_clip: float = 10.0) -> torch.Tensor:
    """Return clamp(scores, −c, c); c = 10 is MOSS-RLHF's `reward_clip` (PPO-max, Zheng et al. 2023)."""
    return scores.clamp(-reward_clip, reward_clip)


# --------------------------------------------------------------------------- GAE and PPO losses


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (advantages, returns), each [B, T], by generalised advantage estimation.   (eq-gae)

        δ_t = r_t + γ V_{t+1} − V_t,   Â_t = δ_t + γλ Â_{t+1},   R_t = Â_t + V_t,

    with V = 0 after the last real token (Schulman et al. 2016, eq. 16). The
    mask must be right-padded; rewards and values on padding are treated as 0,
    and both outputs are 0 there. γ = 1, λ = 0.95 are TRL's PPOConfig defaults.
    Advantages are returned raw: whiten them with `whiten` (as TRL's PPO trainer does).
    """
    if bool((mask[:, 1:] > mask[:, :-1]).any()):
        raise ValueError("gae needs right-padded masks (1…1 0…0); got a 0 followed by a 1")
    m = mask.to(values.dtype)
    rewards, values = rewards * m, values * m
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        adv[:, t] = running
    adv = adv * m
    return adv, (adv + values) * m


def macro_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, size: int, gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (advantages, returns) [B, T] of GAE over macro actions of `size` tokens (MA-RLHF).   (eq-macro-gae)

    Chai et al. (2024, "MA-RLHF") let one action be a run of tokens. With fixed
    chunks c = [c·n, (c+1)·n) of n = `size` tokens:

        R_c = Σ_{t ∈ c} γ^{t − c·n} r_t,   V_c = V(s_{c·n})  (the value where the chunk starts),
        δ_c = R_c + γⁿ V_{c+1} − V_c,      Â_c = δ_c + (γⁿ λ) Â_{c+1},

    i.e. `gae` on the chunk sequence with discount γⁿ. Every token of chunk c
    gets Â_c and the return target Â_c + V_c; only chunk-start values enter
    the estimate, so the targets of the other positions are never used.
    n = 1 is `gae` exactly (tested). Same shapes and masking as `gae`.
    """
    if size < 1:
        raise ValueError(f"size (tokens per macro action) must be ≥ 1, got {size}")
    if size == 1:
        return gae(rewards, values, mask, gamma=gamma, lam=lam)
    if bool((mask[:, 1:] > mask[:, :-1]).any()):
        raise ValueError("macro_gae needs right-padded masks (1…1 0…0); got a 0 followed by a 1")
    B, T = rewards.shape
    m = mask.to(values.dtype)
    pad = (-T) % size
    r = torch.nn.functional.pad(rewards * m, (0, pad)).view(B, -1, size)
    discount = gamma ** torch.arange(size, dtype=r.dtype, device=r.device)
    chunk_rewards = (r * discount).sum(-1)
    chunk_values = (values * m)[:, ::size]
    chunk_mask = m[:, ::size]
    adv, _ = gae(chunk_rewards, chunk_values, chunk_mask, gamma=gamma**size, lam=lam)
    adv = adv.repeat_interleave(size, dim=1)[:, :T] * m
    returns = (adv + chunk_values.repeat_interleave(size, dim=1)[:, :T]) * m
    return adv, returns


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Return the clipped-surrogate policy loss and metrics.                             (eq-ppo-clip)

        ρ_t = exp(lp_θ − lp_old),   L_pg = Σ_{b,t} m·max(−Â ρ, −Â clip(ρ, 1−ε, 1+ε)) / Σ m

    (Schulman et al. 2017, eq. 7; ε = 0.2 is the paper's and TRL's `cliprange`).
    The mean is per token over the whole batch, as TRL's PPO `masked_mean`: every
    token is one action with equal weight. A per-sequence mean first would weight
    a token of a short completion more than one of a long completion (the length
    bias Dr. GRPO points out), which is not the token-level MDP's objective.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        metrics = {
            "loss/policy_avg": loss.item(),
            "policy/clipfrac_avg": masked_mean((clipped > unclipped).float(), mask).item(),
            "policy/approxkl_avg": 0.5 * masked_mean(log_ratio**2, mask).item(),
            "val/ratio": masked_mean(ratio, mask).item(),
        }
    return loss, metrics


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Return the (clipped) value loss and metrics.                                      (eq-ppo-value)

        V_clip = V_old + clip(V − V_old, −ε_v, ε_v)
        L_vf = ½ Σ m·max((V − R)², (V_clip − R)²) / Σ m

    ε_v = 0.2 is TRL's `cliprange_value`; None gives the unclipped ½·MSE.
    """
    unclipped = (values - returns) ** 2
    if clip_range_value is None:
        worst = unclipped
        clipfrac = torch.zeros(())
    else:
        v_clip = old_values + (values - old_values).clamp(-clip_range_value, clip_range_value)
        clipped = (v_clip - returns) ** 2
        worst = torch.max(unclipped, clipped)
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
    loss = 0.5 * masked_mean(worst, mask)
    metrics = {"loss/value_avg": loss.item(), "val/clipfrac_avg": clipfrac.item()}
    return loss, metrics


def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Return the per-token entropy H_t = −Σ_v p log p [B, T] of logits [B, T, V], 0 on padding."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    ent = -(logp.exp() * logp).sum(-1)
    return ent if mask is None else ent * mask.to(ent.dtype)


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019 ("Fine-Tuning LMs from Human Preferences", §2.2).

        e = clip(KL/KL_target − 1, −0.2, 0.2),   β ← β·(1 + e·n_steps/horizon)     (eq-adaptive-kl)

    `kl` is the batch's mean sequence KL. Defaults β₀ = 0.2, target 6, horizon
    10 000 are the paper's (and TRL's old PPOConfig).
    """

    def __init__(self, init_kl_coef: float = 0.2, target: float = 6.0, horizon: int = 10_000):
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), int(horizon)

    def update(self, kl: float, n_steps: int) -> float:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value, self.target, self.horizon = float(state["value"]), float(state["target"]), int(state["horizon"])


class FixedKLController:
    """Constant KL coefficient (TRL's PPO `kl_coef`, default 0.05); same interface as the adaptive one."""

    def __init__(self, kl_coef: float = 0.05):
        self.value = float(kl_coef)

    def update(self, kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
