"""PPO and friends (chapter 2): KL-shaped rewards, GAE, clipped losses, group baselines, filters.

Every function is pure: tensors in, tensors (and, for losses, a dict of python
floats named as TRL names them) out. No model calls, no I/O.

Shapes. Token-level tensors are [B, T] over the completion only, with a
`mask` [B, T] that is 1 on completion tokens that are actions and 0 on
padding; masks are right-padded (1…1 0…0) unless a docstring says otherwise.
Sequence-level tensors are [B]. Grouped tensors hold k samples per prompt,
prompt-major and contiguous: rows [g·k, (g+1)·k) belong to prompt g (TRL's
`view(-1, num_generations)` layout).

Log-ratio convention (METHODS 2.1): log r_t = lp_ref[t] − lp_θ[t], i.e.
r = π_ref/π_θ evaluated on a token sampled from π_θ.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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
    """Return masked-whitened values [B, T]: (x − μ)/√(σ² + eps), zero on padding.      (eq-whiten)

    μ, σ² are the masked mean and unbiased variance over the whole batch. With
    `shift_mean=False` the mean is added back, (x − μ)/σ + μ: only the spread is
    rescaled. That is TRL's `masked_whiten(..., shift_mean=False)`, used on the
    token rewards when `whiten_rewards=True` (METHODS 2.1 "without re-centering");
    advantages are whitened with the shift (METHODS 2.1, PPO-max 2.2).
    """
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(values.dtype)


# --------------------------------------------------------------------------- KL-shaped token rewards

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Return a per-token estimate of KL(π_θ ‖ π_ref), same shape as the inputs.    (eq-kl-estimators)

    With log r = lp_ref − lp_θ (r = π_ref/π_θ on a token sampled from π_θ),
    Schulman's estimators ("Approximating KL divergence", 2020) are

        k1 = −log r                 unbiased, can be negative per token
        k2 = ½ (log r)²             biased, low variance, ≥ 0
        k3 = (r − 1) − log r        unbiased, ≥ 0 (since e^u ≥ 1 + u)

    k1 is TRL's PPO default (`kl_estimator="k1"`, METHODS 2.1); k3 is what
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
    (METHODS 2.1 §3). Summed over t with k1 this telescopes to score − β·ρ_old(y),
    the bandit form (METHODS 2.1 check d).
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
    """Running mean and std of a scalar stream (PPO-max reward scaling, METHODS 2.2).

    Merges batches with Chan et al.'s parallel update, so the result equals the
    mean and (Bessel-corrected) std of everything seen so far. `state_dict`
    round-trips through `torch.save` for checkpointing.
    """

    def __init__(self, eps: float = 1e-8):
        self.eps = eps  # guards the std of a constant stream (METHODS 2.2 check)
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
    """Return clamp(scores, −c, c); c = 10 is MOSS-RLHF's `reward_clip` (METHODS 2.2)."""
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
    Advantages are returned raw: whiten them with `whiten` (METHODS 2.1).
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


# --------------------------------------------------------------------------- group baselines: RLOO and GRPO


def _grouped(scores: torch.Tensor, k: int) -> torch.Tensor:
    if scores.dim() != 1 or scores.numel() % k != 0:
        raise ValueError(f"scores must be [B·k] with k={k} samples per prompt, got {tuple(scores.shape)}")
    return scores.view(-1, k)


def sample_std(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Return the Bessel-corrected std (TRL's `nanstd` without NaNs)."""
    return x.std() if dim is None else x.std(dim=dim)


def rloo_advantages(scores: torch.Tensor, k: int, normalize: bool = False, eps: float = 1e-4) -> torch.Tensor:
    """Return the leave-one-out advantages [B·k] of k samples per prompt.                (eq-rloo)

        A_i = s_i − (1/(k−1)) Σ_{j≠i} s_j = k/(k−1) · (s_i − s̄)

    (Ahmadian et al. 2024, "Back to Basics", eq. 4 / Kool et al. 2019). With
    `normalize`, A ← (A − mean A)/(std A + 1e-4) over the batch, as TRL's
    RLOOConfig `normalize_advantages` (default False). To include TRL's KL
    penalty, pass scores − β·Σ_t m·(lp_old − lp_ref) (its sequence-level k1).
    """
    if k < 2:
        raise ValueError("RLOO needs k ≥ 2 samples per prompt for a leave-one-out baseline")
    g = _grouped(scores, k)
    baseline = (g.sum(1, keepdim=True) - g) / (k - 1)
    adv = (g - baseline).reshape(-1)
    if normalize:
        adv = (adv - adv.mean()) / (sample_std(adv) + eps)
    return adv


def grpo_advantages(scores: torch.Tensor, k: int, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """Return the group-relative advantages [B·k].                                       (eq-grpo-adv)

        A_i = (s_i − mean_group(s)) / (std + eps)

    std is the Bessel-corrected std of the prompt's group (`scale="group"`,
    DeepSeekMath GRPO and TRL's default `scale_rewards`), of the whole batch
    (`"batch"`, PPO-Lite), or no division (`"none"`, Dr. GRPO). eps = 1e-4 is
    added to the std as in TRL (not inside a square root).
    """
    g = _grouped(scores, k)
    adv = g - g.mean(1, keepdim=True)
    if scale == "group":
        adv = adv / (sample_std(g, dim=1).unsqueeze(1) + eps)
    elif scale == "batch":
        adv = adv / (sample_std(scores) + eps)
    elif scale != "none":
        raise ValueError(f"unknown scale {scale!r}; use 'group', 'batch' or 'none'")
    return adv.reshape(-1)


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "dapo",
    importance_sampling_level: str = "token",
    max_completion_length: int | None = None,
    num_items_in_batch: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Return the GRPO clipped loss and TRL-named metrics, as TRL 1.16's GRPOTrainer.   (eq-grpo-loss)

    Per token, with w = exp(lp_θ − lp_old) (token level) or w = exp(mean_t m·(lp_θ − lp_old))
    (`importance_sampling_level="sequence"`, GSPO), A = advantages [B] broadcast over t:

        ℓ_t = −min(w·A, clip(w, 1−ε_low, 1+ε_high)·A) + β·k3_t(π_θ, π_ref)

    and the normalisation of Σ m·ℓ is the loss type's:
        grpo    mean_b (Σ_t m ℓ / Σ_t m)          per-sequence mean, then batch mean
        bnpo    Σ m ℓ / Σ m                        per token over the local batch
        dr_grpo Σ m ℓ / (B · max_completion_length)
        dapo    Σ m ℓ / num_items_in_batch         tokens in the whole generation batch
                                                   (defaults to Σ m: one batch, one process)
    TRL defaults: loss_type "dapo", β = 0 (no KL, no reference model), ε = 0.2,
    ε_high = ε, token-level ratios. With one process, no gradient accumulation and
    steps_per_generation = 1, dapo and bnpo coincide.
    """
    eps_high = epsilon if epsilon_high is None else epsilon_high
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    m = mask.to(logprobs.dtype)
    log_ratio = logprobs - old_logprobs
    if importance_sampling_level == "token":
        log_w = log_ratio
    elif importance_sampling_level == "sequence":
        log_w = ((log_ratio * m).sum(-1) / m.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    else:
        raise ValueError(f"unknown importance_sampling_level {importance_sampling_level!r}; use 'token' or 'sequence'")
    w = torch.exp(log_w)
    w_clip = w.clamp(1.0 - epsilon, 1.0 + eps_high)
    per_token = -torch.min(w * advantages, w_clip * advantages)
    kl = None
    if beta != 0.0:
        if ref_logprobs is None:
            raise ValueError("grpo_loss with beta != 0 needs ref_logprobs")
        kl = kl_penalty(logprobs, ref_logprobs, "k3")  # KL to the reference of the *current* policy
        per_token = per_token + beta * kl
    per_token = per_token.expand_as(m) if per_token.shape != m.shape else per_token
    if loss_type == "grpo":
        loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * m).sum() / m.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length (TRL's GRPOConfig field)")
        loss = (per_token * m).sum() / (per_token.shape[0] * max_completion_length)
    elif loss_type == "dapo":
        n = m.sum() if num_items_in_batch is None else torch.as_tensor(float(num_items_in_batch))
        loss = (per_token * m).sum() / n.clamp(min=1.0)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; use 'grpo', 'bnpo', 'dr_grpo' or 'dapo'")
    with torch.no_grad():
        low = ((w < 1 - epsilon) & (advantages < 0)).float()
        high = ((w > 1 + eps_high) & (advantages > 0)).float()
        # as TRL: a fraction of tokens for token-level ratios, of sequences for sequence-level ones
        frac = (lambda x: masked_mean(x, m)) if low.shape == m.shape else (lambda x: x.mean())
        metrics = {
            "clip_ratio/low_mean": frac(low).item(),
            "clip_ratio/high_mean": frac(high).item(),
            "clip_ratio/region_mean": frac(torch.max(low, high)).item(),
        }
        if kl is not None:
            metrics["kl"] = masked_mean(kl, m).item()
    return loss, metrics


def rloo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Return TRL 1.16's RLOO loss: a sequence-level clipped surrogate, mean over B.     (eq-rloo-loss)

        q = exp(Σ_t m·lp_θ − Σ_t m·lp_old),   L = mean_b −min(q·A, clip(q, 1−ε, 1+ε_high)·A)

    Token inputs [B, T]; advantages [B] from `rloo_advantages` (KL, if any, is in
    the reward). ε = 0.2 is RLOOConfig's default. With one update per batch q = 1
    and the gradient is the REINFORCE-with-baseline one of Ahmadian et al. 2024.
    """
    eps_high = epsilon if epsilon_high is None else epsilon_high
    m = mask.to(logprobs.dtype)
    q = torch.exp((logprobs * m).sum(-1) - (old_logprobs * m).sum(-1))
    per_seq = -torch.min(q * advantages, q.clamp(1 - epsilon, 1 + eps_high) * advantages)
    loss = per_seq.mean()
    with torch.no_grad():
        low = (q < 1 - epsilon) & (advantages < 0)
        high = (q > 1 + eps_high) & (advantages > 0)
        metrics = {"clip_ratio/low_mean": low.float().mean().item(), "clip_ratio/high_mean": high.float().mean().item(),
                   "clip_ratio/region_mean": (low | high).float().mean().item()}
    return loss, metrics


# --------------------------------------------------------------------------- P3O, RAFT, SuperHF, PF-PPO


def p3o_loss(
    logps_1: torch.Tensor,
    old_logps_1: torch.Tensor,
    logps_2: torch.Tensor,
    old_logps_2: torch.Tensor,
    scores_1: torch.Tensor,
    scores_2: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Return the pairwise trajectory-wise clipped P3O loss (mean over B pairs).         (eq-p3o)

    Two completions of one prompt, sequence log-probs [B] (ℓ = Σ_t m·lp), scores [B]
    (put the KL penalty into the scores, e.g. score − β·Σ_t kl_t). With
    q_i = exp(ℓ_θ(y_i) − ℓ_old(y_i)) and Δ = (s_1 − s_2)/2, each trajectory is a
    PPO term with advantage ±Δ, clipped separately (Wu et al. 2023, "clip separately"):

        L = max(−Δ q_1, −Δ clip(q_1)) + max(Δ q_2, Δ clip(q_2))

    Unclipped, ∇L = −Δ(q_1 ∇ℓ(y_1) − q_2 ∇ℓ(y_2)): the pairwise policy gradient,
    which depends on scores only through s_1 − s_2 (invariant to a per-prompt shift
    c(x)). METHODS 2.4 marks the exact form UNVERIFIED; the joint-clipping variant
    is not implemented here.
    """
    half_gap = 0.5 * (scores_1 - scores_2)
    q1, q2 = torch.exp(logps_1 - old_logps_1), torch.exp(logps_2 - old_logps_2)
    lo, hi = 1 - clip_range, 1 + clip_range
    term1 = torch.max(-half_gap * q1, -half_gap * q1.clamp(lo, hi))
    term2 = torch.max(half_gap * q2, half_gap * q2.clamp(lo, hi))
    loss = (term1 + term2).mean()
    with torch.no_grad():
        clipped = ((q1 - q1.clamp(lo, hi)).abs() > 0) | ((q2 - q2.clamp(lo, hi)).abs() > 0)
        metrics = {"loss/policy_avg": loss.item(), "policy/clipfrac_avg": clipped.float().mean().item()}
    return loss, metrics


def raft_select(scores: torch.Tensor, k: int, keep: float = 0.2, strategy: str = "local") -> torch.Tensor:
    """Return the sorted indices [n_kept] of the top-`keep` fraction of samples to finetune on (RAFT).

    `strategy="local"`: the top ⌈keep·k⌉ (at least 1) of each prompt's k samples;
    `"top"`: the top ⌈keep·B·k⌉ of the whole batch (LMFlow's default
    `collection_strategy`). keep = 0.2 is LMFlow's `top_reward_percentage`
    (METHODS 2.6). keep = 1 keeps everything (SFT on own samples). Ties go to the
    lower index (stable sort).
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    g = _grouped(scores, k)
    if strategy == "local":
        n = max(1, math.ceil(keep * k - 1e-9))
        order = torch.sort(g, dim=1, descending=True, stable=True).indices[:, :n]
        idx = order + torch.arange(g.shape[0], device=scores.device).unsqueeze(1) * k
    elif strategy == "top":
        n = max(1, math.ceil(keep * scores.numel() - 1e-9))
        idx = torch.sort(scores, descending=True, stable=True).indices[:n]
    else:
        raise ValueError(f"unknown strategy {strategy!r}; use 'local' or 'top'")
    return idx.flatten().sort().values


def superhf_loss(
    policy_logits: torch.Tensor,
    orig_logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Return the SuperHF loss on the filtered (best-of-superbatch) completions.         (eq-superhf)

        L = CE(y_best) + c · max(0, KL̄),   KL̄ = Σ_t m Σ_v p_orig (log p_orig − log p_θ) / Σ_t m

    (Mukobi et al. 2023; METHODS 2.7). Logits [B, T, V] aligned with `labels` [B, T]
    (already shifted), `mask` [B, T]. KL̄ is PyTorch's
    KLDivLoss(reduction="batchmean", log_target=True)(log p_θ, log p_orig) over the
    completion tokens, i.e. KL(p_orig ‖ p_θ) averaged per token, as SuperHF's code.
    c = 0 is its dataclass default (set per experiment). Select y_best with
    `raft_select(scores, k, keep=1/k)`.
    """
    m = mask.to(policy_logits.dtype)
    logp = torch.log_softmax(policy_logits.float(), -1)
    nll = -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    ce = masked_mean(nll, m)
    logp_orig = torch.log_softmax(orig_logits.float(), -1)
    kl_tok = (logp_orig.exp() * (logp_orig - logp)).sum(-1)
    kl = masked_mean(kl_tok, m)
    loss = ce + kl_coef * kl.clamp(min=0.0)
    return loss, {"loss/sft": ce.item(), "objective/kl": kl.item(), "loss": loss.item()}


def pf_filter(
    scores: torch.Tensor,
    k: int,
    strategy: str = "best_random",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return sorted indices [n_kept] of the samples PF-PPO trains on (policy filtration).

    PF-PPO (Shen et al. 2024, "Policy Filtration in RLHF to Fine-Tune LLM for Code
    Generation") samples k responses per prompt and keeps those whose reward the
    RM is reliable on, choosing the rule by the R² between rewards and true scores
    on the kept set. Strategies (per prompt group):
        best_of_n    the highest-scoring response
        best_random  the highest plus one other drawn uniformly       (our default)
        best_worst   the highest and the lowest
    The abstract (../shared/seeds) gives only the principle; the three rules are
    from our reading of the paper, which reports the RM reliable at the high end and
    BR/BW as its strong variants. UNVERIFIED against the paper's code.
    """
    g = _grouped(scores, k)
    n_groups = g.shape[0]
    offsets = torch.arange(n_groups, device=scores.device) * k
    best = g.argmax(1)
    if strategy == "best_of_n":
        idx = best + offsets
    elif strategy == "best_worst":
        if k < 2:
            raise ValueError("best_worst needs k ≥ 2")
        # the worst among the others, so a group of equal scores still yields two samples
        worst = g.masked_fill(F.one_hot(best, k).bool(), float("inf")).argmin(1)
        idx = torch.stack([best, worst], 1) + offsets.unsqueeze(1)
    elif strategy == "best_random":
        if k < 2:
            raise ValueError("best_random needs k ≥ 2")
        # draw uniformly among the k−1 others: a draw in [0, k−2], shifted past `best`
        r = torch.randint(0, k - 1, (n_groups,), generator=generator).to(scores.device)
        other = r + (r >= best).long()
        idx = torch.stack([best, other], 1) + offsets.unsqueeze(1)
    else:
        raise ValueError(f"unknown strategy {strategy!r}; use 'best_of_n', 'best_random' or 'best_worst'")
    return idx.flatten().sort().values
