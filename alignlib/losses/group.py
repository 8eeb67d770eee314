"""Critic-free policy gradients over groups of samples (RLOO, GRPO) and sampling-based baselines.

RLOO and GRPO replace PPO's learned value function by the other samples of the
same prompt; RAFT, SuperHF and policy filtration select or filter samples
before a supervised or PPO-style update; P3O compares two trajectories of one
prompt. Conventions (shapes, masks, the grouped layout) are those of
`alignlib.losses.ppo`: k samples per prompt, prompt-major and contiguous.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .ppo import kl_penalty, masked_mean

# --------------------------------------------------------------------------- group baselines: RLOO and GRPO


def _grouped(scores: torch.Tensor, k: int) -> torch.Tensor:
    if scores.dim() != 1 or scores.numel() % k != 0:
        raise ValueError(f"scores must be [B·k] with k={k} samples per prompt, got {tuple(scores.shape)}")
    return scores.view(-1, k)


def sample_std(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Return the Bessel-corrected std (TRL's `nanstd` without NaNs)."""
    return x.std() if dim is None else x.std(dim=dim)


def rloo_advantages(scores: torch.Tensor, k: int, normalize: bool = False, eps: float = 1e-4) -> torch.Tensor:
    """Return the leave-one-out advantages [B·k] of k samples per prompt.

        A_i = s_i − (1/(k−1)) Σ_{j≠i} s_j = k/(k−1) · (s_i − s̄)

    (Ahmadian et al. 2024, "Back to Basics", eq. 4 / Kool et al. 2019; chapter 3 gives it in words,
    as a baseline in (eq-policy-gradient).) With
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
    """Return the group-relative advantages [B·k].

        A_i = (s_i − mean_group(s)) / (std + eps)

    (Chapter 3 gives it in words, as a baseline in (eq-policy-gradient).) std is the
    Bessel-corrected std of the prompt's group (`scale="group"`,
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
    """Return the GRPO clipped loss and TRL-named metrics, as TRL 1.16's GRPOTrainer.

    Per token, with w = exp(lp_θ − lp_old) (token level) or w = exp(mean_t m·(lp_θ − lp_old))
    (`importance_sampling_level="sequence"`, GSPO), A = advantages [B] broadcast over t:

        ℓ_t = −min(w·A, clip(w, 1−ε_low, 1+ε_high)·A) + β·k3_t(π_θ, π_ref)

    (the per-token term of chapter 3's (eq-ppo-clip), plus the k3 penalty of `kl_penalty`)

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
    """Return TRL 1.16's RLOO loss: a sequence-level clipped surrogate, mean over B.

        q = exp(Σ_t m·lp_θ − Σ_t m·lp_old),   L = mean_b −min(q·A, clip(q, 1−ε, 1+ε_high)·A)

    (chapter 3's (eq-ppo-clip) with one ratio per sequence instead of per token)

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
    c(x)). At q_1 = q_2 = 1 the loss value is 0 but its gradient is not.

    Checked against the paper as far as our sources reach (secondary summaries of
    arXiv 2310.00212; the PDF and official code were not available to us): the
    pairwise policy gradient E[(r(y_1) − r(y_2)) ∇(log π(y_1) − log π(y_2))/2] (its
    Theorem 1 / eq. 6), the KL-penalised trajectory reward r − β·KL, two samples per
    prompt from π_old, and two clipping variants, "separately" (P3O-V1, this
    function) and "jointly" (P3O-V2, not implemented). The exact V1 formula above is
    our derivation (each trajectory a PPO term with advantage ±Δ), not copied from
    the paper's Section 4.2, so it remains unverified.
    """
    half_gap = 0.5 * (scores_1 - scores_2)
    q1, q2 = torch.exp(logps_1 - old_logps_1), torch.exp(logps_2 - old_logps_2)
    lo, hi = 1 - clip_range, 1 + clip_range
    unclipped1, clipped1 = -half_gap * q1, -half_gap * q1.clamp(lo, hi)
    unclipped2, clipped2 = half_gap * q2, half_gap * q2.clamp(lo, hi)
    loss = (torch.max(unclipped1, clipped1) + torch.max(unclipped2, clipped2)).mean()
    with torch.no_grad():
        # as TRL's PPO clipfrac: the share of the 2B trajectory terms whose clipped branch is active (zero gradient)
        clipped = torch.cat([clipped1 > unclipped1, clipped2 > unclipped2]).float()
        metrics = {"loss/policy_avg": loss.item(), "policy/clipfrac_avg": clipped.mean().item()}
    return loss, metrics


def raft_select(scores: torch.Tensor, k: int, keep: float = 0.2, strategy: str = "local") -> torch.Tensor:
    """Return the sorted indices [n_kept] of the top-`keep` fraction of samples to finetune on (RAFT).

    `strategy="local"`: the top ⌈keep·k⌉ (at least 1) of each prompt's k samples;
    `"top"`: the top ⌈keep·B·k⌉ of the whole batch (LMFlow's default
    `collection_strategy`). keep = 0.2 is LMFlow's `top_reward_percentage`
    (Dong et al. 2023, RAFT). keep = 1 keeps everything (SFT on own samples). Ties go to the
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
    """Return the SuperHF loss on the filtered (best-of-superbatch) completions.

        L = CE(y_best) + c · max(0, KL̄),   KL̄ = Σ_t m Σ_v p_orig (log p_orig − log p_θ) / Σ_t m

    (Mukobi et al. 2023; chapter 3, "SuperHF, P3O and policy filtration", in words).
    Logits [B, T, V] aligned with `labels` [B, T] (already shifted), `mask` [B, T]. KL̄ is PyTorch's
    KLDivLoss(reduction="batchmean", log_target=True)(log p_θ, log p_orig) over the
    completion tokens, i.e. KL(p_orig ‖ p_θ) averaged per token, as SuperHF's code.
    c = 0 is its dataclass default (set per experiment). Select y_best with
    `raft_select(scores, k, keep=1/k)`.
    """
    if policy_logits.shape != orig_logits.shape or labels.shape != policy_logits.shape[:2] or mask.shape != labels.shape:
        raise ValueError(f"superhf_loss needs logits [B, T, V] (policy and original alike) and labels, mask [B, T]; "
                         f"got policy {tuple(policy_logits.shape)}, original {tuple(orig_logits.shape)}, labels "
                         f"{tuple(labels.shape)}, mask {tuple(mask.shape)} (shift logits and labels by one first)")
    if kl_coef < 0:
        raise ValueError(f"kl_coef (the weight c of the KL prior) must be ≥ 0, got {kl_coef}")
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
