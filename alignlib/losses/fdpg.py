"""f-DPG: approximate a target distribution p by minimising an f-divergence D_f(π_θ ‖ p) (Go et al. 2023).

Alignment as distribution matching: the target is p(y|x) = P(y|x) / Z(x) with an
unnormalised P we can evaluate. For RLHF's tilted optimum, P = π_ref · exp(r/β)
(the closed form of the KL-regularised objective, book/notation.md eq-kl-optimum); for GDC, P = π_ref · b
with a constraint b. With u(y) = π_θ(y|x) / p(y|x),

    D_f(π_θ ‖ p) = E_{y∼p}[ f(u(y)) ],      f convex, f(1) = 0,                  (eq-fdpg-div)
    ∇_θ D_f      = E_{y∼π_θ}[ f'(u(y)) ∇_θ log π_θ(y|x) ],                        (eq-fdpg-grad)

a policy gradient with the per-sample *pseudo-reward* −f'(u). The generators below are
those of the paper and of its library (naver/disco, `f_prime` of each loss; JS there is
twice the textbook JS, i.e. without the factor ½):

    reverse_kl   KL(π_θ ‖ p)   f(u) = u log u                           f'(u) = 1 + log u
    forward_kl   KL(p ‖ π_θ)   f(u) = −log u                            f'(u) = −1/u
    js           2·JS          f(u) = u log u − (1+u) log((1+u)/2)      f'(u) = log(2u/(1+u))
    tv           TV            f(u) = ½|u − 1|                          f'(u) = ½ sign(u − 1)

Z(x) is unknown. Here it is estimated per prompt from the k samples of the prompt's group
by importance sampling, Ẑ = (1/k) Σ_j P(y_j)/π_θ(y_j), so u_i = Ẑ / w_i with w_i = P/π_θ
(self-normalised: the loss is unchanged if log P is shifted by any constant per prompt).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DIVERGENCES = ("reverse_kl", "forward_kl", "js", "tv")


def _check_divergence(divergence: str) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown f-DPG divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")


def f_generator(divergence: str, log_u: torch.Tensor) -> torch.Tensor:
    """Return f(u) of `divergence` at u = exp(log_u), elementwise (the generators of the module docstring)."""
    _check_divergence(divergence)
    u = log_u.exp()
    if divergence == "reverse_kl":
        return u * log_u
    if divergence == "forward_kl":
        return -log_u
    if divergence == "js":  # u log u − (1+u) log((1+u)/2), with log(1+u) = softplus(log u)
        return u * log_u - (1 + u) * (F.softplus(log_u) - math.log(2.0))
    return 0.5 * (u - 1).abs()


def f_prime(divergence: str, log_u: torch.Tensor) -> torch.Tensor:
    """Return f'(u) of `divergence` at u = exp(log_u), elementwise, computed in log space.

    f'(1) is 1 (reverse KL), −1 (forward KL), 0 (JS) and 0 (TV, the subgradient at the kink).
    """
    _check_divergence(divergence)
    if divergence == "reverse_kl":
        return 1.0 + log_u
    if divergence == "forward_kl":
        return -torch.exp(-log_u)
    if divergence == "js":  # log(2u/(1+u)) = log 2 − log(1 + 1/u) = log 2 − softplus(−log u)
        return math.log(2.0) - F.softplus(-log_u)
    # TV: the subgradient 0 at the kink u = 1, widened to |log u| ≤ 1e-6 so that rounding noise in log u
    # (at π_θ = p it is ~1e-16) does not flip the sign
    return 0.5 * torch.sign(log_u) * (log_u.abs() > 1e-6)


def tilted_log_target(ref_logps: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """Return log P(y|x) = log π_ref(y|x) + r(x, y)/β, the unnormalised RLHF optimum π* ∝ π_ref e^{r/β}."""
    if beta <= 0:
        raise ValueError(f"the tilted target π_ref·exp(r/β) needs beta > 0, got {beta}")
    return ref_logps + rewards / beta


def fdpg_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor,
    samples_per_prompt: int,
    beta: float,
    divergence: str = "reverse_kl",
    log_target: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Return the f-DPG surrogate loss, whose gradient is the estimate of ∇ D_f(π_θ ‖ p), and metrics.

    logps      [B·k] log π_θ(y|x) of the sampled completions (summed over tokens; with grad)
    ref_logps  [B·k] log π_ref(y|x) (no grad needed)
    rewards    [B·k] r(x, y); the target is p ∝ π_ref · exp(r/β) unless `log_target` is given
    samples_per_prompt  k; rows are prompt-major (the k samples of a prompt are contiguous)
    log_target [B·k] optional log P(y|x) of any unnormalised target (finite; overrides ref_logps/rewards)

    For each prompt, with log w_i = log P(y_i) − log π_θ(y_i) (detached):

        log Ẑ = logsumexp_j(log w_j) − log k,   log u_i = log Ẑ − log w_i          (eq-fdpg-z)
        R_i = −f'(u_i),   A_i = R_i − mean_j R_j                                    (eq-fdpg-z)
        L = −(1/(B·k)) Σ_i A_i · log π_θ(y_i)                                       (the loss under eq-fdpg-z)

    so ∇L is the Monte-Carlo estimate of (eq-fdpg-grad) with the group mean as baseline (the
    group mean equals (k−1)/k times the leave-one-out baseline's advantage, so the estimate is
    unbiased up to that scale, apart from the bias of the self-normalised Ẑ for small k).
    Reverse KL gives R_i = r_i/β − log(π_θ/π_ref)(y_i) + const: RLHF's KL-penalised reward
    divided by β. Forward KL gives R_i = w_i/Ẑ: the normalised importance weights p/π_θ of DPG.
    """
    _check_divergence(divergence)
    dtype = torch.promote_types(logps.dtype, torch.float32)  # at least float32 (bf16 policies), float64 kept
    k = samples_per_prompt
    if k < 2:
        raise ValueError(f"f-DPG estimates Z(x) and a baseline from the samples of a prompt: samples_per_prompt "
                         f"must be ≥ 2, got {k}")
    if logps.dim() != 1 or logps.numel() % k != 0:
        raise ValueError(f"logps must be [B·k] with k={k} samples per prompt, got {tuple(logps.shape)}")
    if ref_logps.shape != logps.shape or rewards.shape != logps.shape:
        raise ValueError(f"logps, ref_logps and rewards must have the same shape [B·k], got {tuple(logps.shape)}, "
                         f"{tuple(ref_logps.shape)} and {tuple(rewards.shape)}")
    if log_target is None:
        log_target = tilted_log_target(ref_logps.detach().to(dtype), rewards.detach().to(dtype), beta)
    elif log_target.shape != logps.shape:
        raise ValueError(f"log_target must be [B·k] like logps, got {tuple(log_target.shape)}")
    if not torch.isfinite(log_target).all():
        raise ValueError("log_target (log P of the unnormalised target) must be finite; a hard constraint b = 0 "
                         "makes the reverse KL infinite: soften it, e.g. log P = log π_ref + log(b + ε)")
    lp = logps.to(dtype)
    log_w = (log_target.detach().to(dtype) - lp.detach()).view(-1, k)          # log P/π_θ   [B, k]
    log_z = torch.logsumexp(log_w, dim=1, keepdim=True) - math.log(k)        # log Ẑ(x)    [B, 1]
    log_u = log_z - log_w                                                    # log π_θ/p   [B, k]
    pseudo = -f_prime(divergence, log_u)                                     # R_i         [B, k]
    advantages = (pseudo - pseudo.mean(dim=1, keepdim=True)).reshape(-1)
    loss = -(advantages * lp).mean()
    weights = torch.softmax(log_w, dim=1)                                    # normalised w_i/Σw
    with torch.no_grad():
        # the group's own estimate of D_f(π_θ ‖ p) = E_π[(p/π) f(u)] ≈ Σ_i (w_i/Σw) f(u_i), and its ESS fraction
        div_estimate = (weights * f_generator(divergence, log_u)).sum(1).mean()
        ess = (1.0 / (weights**2).sum(1)).mean() / k
    return loss, {"pseudo_reward": pseudo.mean().item(), "pseudo_reward_std": pseudo.std().item(),
                  "log_z": log_z.mean().item(), "f_divergence": div_estimate.item(), "ess": ess.item()}


@torch.no_grad()
def tilted_target_kls(
    beta: float,
    ref_rewards: torch.Tensor,
    ref_logps_ref: torch.Tensor,
    ref_logps_policy: torch.Tensor,
    policy_rewards: torch.Tensor,
    policy_logps: torch.Tensor,
    policy_logps_ref: torch.Tensor,
) -> dict[str, float]:
    """Estimate how far a policy is from the tilted target p ∝ π_ref·exp(r/β), in both directions.

    Inputs are grouped by prompt: [B, M] for M samples y'_j ∼ π_ref of each prompt (their reward,
    log π_ref and log π_θ) and [B, N] for N samples y_i ∼ π_θ (reward, log π_θ, log π_ref).
    With the π_ref samples as proposal, w_j = exp(r_j/β) and w̃ = w/Σw (self-normalised):

        Z(x) ≈ (1/M) Σ_j w_j                                         (Z = E_{π_ref}[e^{r/β}])
        KL(π_θ ‖ p) = KL(π_θ ‖ π_ref) − E_{π_θ}[r]/β + log Z          (exact identity; MC over y ∼ π_θ)
        KL(p ‖ π_θ) ≈ Σ_j w̃_j [log p(y'_j) − log π_θ(y'_j)],  log p = log π_ref + r/β − log Z

    Also the target's own gold reward E_p[r], KL(p ‖ π_ref) and entropy H(p) (same weights), and
    the effective-sample-size fraction of the weights. Returns means over prompts. Both KLs are
    estimates: the forward one is only as good as π_ref's coverage of p (see `ess`).
    """
    if beta <= 0:
        raise ValueError(f"the tilted target needs beta > 0, got {beta}")
    shapes = {t.shape for t in (ref_rewards, ref_logps_ref, ref_logps_policy)}
    pshapes = {t.shape for t in (policy_rewards, policy_logps, policy_logps_ref)}
    if len(shapes) != 1 or len(pshapes) != 1 or ref_rewards.dim() != 2 or policy_rewards.dim() != 2 \
            or ref_rewards.shape[0] != policy_rewards.shape[0]:
        raise ValueError(f"reference-sample tensors must share one shape [B, M] and policy-sample tensors one shape "
                         f"[B, N] with the same B prompts; got {sorted(map(tuple, shapes))} and "
                         f"{sorted(map(tuple, pshapes))}")
    m = ref_rewards.shape[1]
    log_w = ref_rewards.double() / beta
    log_z = torch.logsumexp(log_w, 1) - math.log(m)                                    # [B]
    wn = torch.softmax(log_w, 1)
    log_p = ref_logps_ref.double() + log_w - log_z[:, None]
    kl_policy_ref = (policy_logps.double() - policy_logps_ref.double()).mean(1)
    reverse = kl_policy_ref - policy_rewards.double().mean(1) / beta + log_z
    forward = (wn * (log_p - ref_logps_policy.double())).sum(1)
    return {"reverse_kl": reverse.mean().item(), "forward_kl": forward.mean().item(), "log_z": log_z.mean().item(),
            "target_gold": (wn * ref_rewards.double()).sum(1).mean().item(),
            "target_kl_ref": (wn * (log_w - log_z[:, None])).sum(1).mean().item(),
            "target_entropy": -(wn * log_p).sum(1).mean().item(),
            "ess": ((1.0 / (wn**2).sum(1)) / m).mean().item()}
