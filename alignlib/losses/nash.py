"""Nash / self-play losses: Nash-MD, SPPO, DNO and INPO over sequence log-probabilities.

These methods target the Nash equilibrium of a general preference P(y ≻ y' | x)
instead of a Bradley–Terry reward. Every function is pure: it takes log-probabilities
(sequence sums ℓ(y) = Σ_t m_t log π(y_t | x, y_<t), shape [B], or token log-probs
[B, T] with a completion mask) and judge outputs (probabilities or estimated win rates
in [0, 1], shape [B]) and returns (loss, metrics). Notation as in the book's Notation page and
chapter 5; ρ(y) = ℓ_θ(y) − ℓ_ref(y) where "ref" is whatever the method regresses
against — for SPPO and DNO the previous iterate π_t, for Nash-MD the fixed π_ref.

The online loop supplies what these need: samples from the policy (and, for Nash-MD,
from the geometric mixture of `geometric_mixture_logits`), judge probabilities, and
per-response win rates from `estimated_win_rates`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .pairwise import Metrics, log_ratios, reward_metrics


def _check_probs(values: torch.Tensor, what: str) -> torch.Tensor:
    """Return `values` after checking they are finite probabilities in [0, 1] (clear error otherwise)."""
    if not torch.is_tensor(values):
        values = torch.as_tensor(values, dtype=torch.float32)
    bad = ~torch.isfinite(values) | (values < 0) | (values > 1)
    if bad.any():
        raise ValueError(f"{what} must lie in [0, 1]; got {values[bad][0].item()!r}. A judge returns "
                         "probabilities P(a ≻ b), not scores or logits; pass scores through a sigmoid first.")
    return values


def _same_shape(reference: torch.Tensor, **tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if t.shape != reference.shape:  # broadcasting would silently pair the wrong responses
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(reference.shape)}")


# ------------------------------------------------------------------ judge outputs → win rates
def estimated_win_rates(pair_probabilities: torch.Tensor) -> torch.Tensor:
    """Return P̂(y_k ≻ π) = (1/K) Σ_j P(y_k ≻ y_j), shape [B, K], from pair probabilities [B, K, K].

    SPPO's estimator (uclaml/SPPO `scripts/compute_prob.py`): K samples per prompt, each
    scored against all K including itself (which contributes ½). Entries must be in [0, 1].
    """
    p = _check_probs(pair_probabilities, "pair probabilities P(y_k ≻ y_j)")
    if p.dim() != 3 or p.shape[1] != p.shape[2]:
        raise ValueError(f"pair_probabilities must have shape [B, K, K], got {tuple(p.shape)}")
    return p.mean(dim=-1)


# ------------------------------------------------------------------ Nash-MD
def geometric_mixture_logits(policy_logits: torch.Tensor, ref_logits: torch.Tensor,
                             mixture_coef: float = 0.5) -> torch.Tensor:
    """Return next-token log-probs of the geometric mixture π^{1−c} π_ref^{c} / Z, same shape as the inputs.

        log π_c(· | s) = log_softmax((1 − c) · z_θ + c · z_ref)                  (eq-ch5-mixture)

    (Munos et al. 2024, the "Nash-MD-PG" practical algorithm: the opponent samples token
    by token from the mixture; TRL `GeometricMixtureWrapper.forward`.) Logits are
    log-probs up to a per-position constant, so this is the normalised per-token
    geometric mixture (not the sequence-level one, which is intractable). c = 0
    gives the policy (self-play), c = 1 the reference. Default c = 0.5 is TRL's
    `NashMDConfig.mixture_coef`. Shapes: [..., V].
    """
    if not 0.0 <= mixture_coef <= 1.0:
        raise ValueError(f"mixture_coef must be in [0, 1], got {mixture_coef}")
    _same_shape(policy_logits, ref_logits=ref_logits)
    return F.log_softmax((1 - mixture_coef) * policy_logits.float() + mixture_coef * ref_logits.float(), dim=-1)


def nash_md_policy_gradient_loss(
    policy_token_logps: torch.Tensor,
    ref_token_logps: torch.Tensor,
    completion_mask: torch.Tensor,
    probabilities: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """Return the Nash-MD policy-gradient loss (mean over the batch) and metrics.

    For y ~ π_θ and y' ~ the geometric mixture, with p = P(y ≻ y' | x) from the judge:

        L = β Σ_t sg(lp_θ,t − lp_ref,t) · lp_θ,t  −  (p − ½) · ℓ_θ(y)          (eq-ch5-nash-md-loss)

    a REINFORCE estimate of β KL(π_θ‖π_ref) minus the preference against the mixture,
    with ½ as baseline (Munos et al. 2024, Nash-MD-PG; verified against TRL 1.13
    `NashMDTrainer._compute_losses`). Its gradient,
    −(p − ½) ∇ℓ_θ(y) + β Σ_t log(π_θ/π_ref)(y_t) ∇lp_θ,t, raises the log-probability of
    samples that beat the mixture and pulls towards π_ref (TRL keeps only the same-token
    KL weight, not the sum over later tokens).
    β = 0.1 is TRL's `OnlineDPOConfig` default.

    Shapes: token log-probs and mask [B, T]; probabilities [B]; scalar loss.
    Metrics: loss/score (mean (p − ½)ℓ), loss/kl (mean Σ_t log π_θ/π_ref), rewards/probabilities.
    """
    _same_shape(policy_token_logps, ref_token_logps=ref_token_logps, completion_mask=completion_mask)
    probs = _check_probs(probabilities, "Nash-MD judge probabilities")
    if probs.shape != policy_token_logps.shape[:1]:
        raise ValueError(f"probabilities must have shape [B] = {tuple(policy_token_logps.shape[:1])}, "
                         f"got {tuple(probs.shape)}")
    mask = completion_mask.to(policy_token_logps.dtype)
    lp = policy_token_logps * mask
    with torch.no_grad():  # the REINFORCE weight of the KL term is a constant per token
        log_ratio = (policy_token_logps - ref_token_logps) * mask
    score = (probs.to(lp.dtype) - 0.5) * lp.sum(-1)
    kl_term = (log_ratio * lp).sum(-1)
    loss = (beta * kl_term - score).mean()
    return loss, {"loss/score": score.mean().item(), "loss/kl": log_ratio.sum(-1).mean().item(),
                  "rewards/probabilities": probs.float().mean().item()}


# ------------------------------------------------------------------ SPPO
def sppo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.001,
    chosen_win_rates: torch.Tensor | None = None,
    rejected_win_rates: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Return the SPPO loss (mean over the batch) and TRL-named metrics.

    With ρ = ℓ_θ − ℓ_{π_t} against the previous iterate π_t and P̂ the estimated win rate
    P̂(y ≻ π_t) (see `estimated_win_rates`):

        L_SPPO = ½ [ (ρ_w − (P̂_w − ½)/β)² + (ρ_l − (P̂_l − ½)/β)² ]              (eq-ch5-sppo-loss)

    (Wu et al. 2024, eq. 4.7/Algorithm 1 with η = 1/β; the ½ is the authors' code,
    uclaml/SPPO `sppo/trainer.py`, loss_type="sppo".) It regresses log π/π_t onto the
    multiplicative-weights step η(P̂ − ½), approximating log Z by η/2. "chosen/rejected"
    are the best and worst of K samples; the loss itself is order-free. Hard labels
    P̂_w = 1, P̂_l = 0 give ½ × TRL's `sppo_hard`. β = 0.001 is the authors'
    (`run_sppo_mistral.sh`, for 7B models and lr 5e-7); the pocket model needs a larger β.
    Shapes: all inputs [B]; scalar loss.
    """
    if chosen_win_rates is None or rejected_win_rates is None:
        raise ValueError("sppo_loss needs chosen_win_rates and rejected_win_rates (estimated P̂(y ≻ π_t))")
    rho_w, rho_l = log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    p_w = _check_probs(chosen_win_rates, "SPPO chosen win rates").to(rho_w.dtype)
    p_l = _check_probs(rejected_win_rates, "SPPO rejected win rates").to(rho_w.dtype)
    _same_shape(rho_w, chosen_win_rates=p_w, rejected_win_rates=p_l)
    losses = 0.5 * ((rho_w - (p_w - 0.5) / beta) ** 2 + (rho_l - (p_l - 0.5) / beta) ** 2)
    return losses.mean(), reward_metrics(rho_w, rho_l, beta)


def sppo_group_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    win_rates: torch.Tensor,
    eta: float = 1000.0,
) -> tuple[torch.Tensor, Metrics]:
    """Return SPPO's regression on every sample (mean over samples) and metrics.

    With ρ(y) = ℓ_θ(y) − ℓ_{π_t}(y) against the previous iterate and P̂(y ≻ π_t) its
    estimated win rate:

        L = mean_y ( ρ(y) − η (P̂(y) − ½) )²                                    (eq-ch5-sppo-loss)

    the same per-sample regression as `sppo_loss` (Wu et al. 2024, eq. 4.7, η = 1/β),
    applied to all K samples of a prompt instead of its best and worst; on a batch laid
    out as chosen then rejected it equals `sppo_loss` with β = 1/η. Its minimiser is
    ρ = η(P̂ − ½), the multiplicative-weights step with log Z ≈ η/2. η = 1000 is the
    authors' (β = 0.001). Shapes: all inputs [N]; scalar loss.
    Metrics: sppo/rho (mean ρ), sppo/target (mean η(P̂ − ½)), sppo/win_rate (mean P̂).
    """
    if eta <= 0:
        raise ValueError(f"eta (SPPO's step size, 1/β) must be > 0, got {eta}")
    _same_shape(policy_logps, ref_logps=ref_logps)
    rates = _check_probs(win_rates, "SPPO win rates").to(policy_logps.dtype)
    _same_shape(policy_logps, win_rates=rates)
    rho = policy_logps - ref_logps
    target = eta * (rates - 0.5)
    loss = ((rho - target) ** 2).mean()
    return loss, {"sppo/rho": rho.detach().mean().item(), "sppo/target": target.mean().item(),
                  "sppo/win_rate": rates.mean().item()}


# ------------------------------------------------------------------ DNO
def dno_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    chosen_win_rates: torch.Tensor | None = None,
    rejected_win_rates: torch.Tensor | None = None,
    margin: float = 0.0,
    hard_labels: bool = False,
) -> tuple[torch.Tensor, Metrics]:
    """Return the DNO loss (mean over the kept pairs) and metrics.

    Pairs are two on-policy samples of π_t with win rates r(y) = P̂(y ≻ π_t); ρ is taken
    against π_t, h = ρ_w − ρ_l. A pair is kept when r_w − r_l ≥ `margin`; on kept pairs

        L_DNO = −[ q log σ(β h) + (1 − q) log σ(−β h) ],  q = σ(r_w − r_l)      (eq-ch5-dno-loss)

    (Rosset et al. 2024, Algorithm 1: batched on-policy contrastive regression of the
    implicit reward β ρ onto the win rate against π_t; chapter 5. The exact form is not verified against the paper.)
    `hard_labels=True` sets q = 1, which is DNO-Prct (their Algorithm 2): DPO with the
    reference reset to π_t on margin-filtered pairs — with margin 0 exactly `dpo_loss`.
    Defaults: β = 0.1 (TRL's DPO default; the paper's value is unverified), margin 0.
    Shapes: all inputs [B]; scalar loss (0 with zero gradient if no pair is kept).
    """
    if chosen_win_rates is None or rejected_win_rates is None:
        raise ValueError("dno_loss needs chosen_win_rates and rejected_win_rates (estimated P̂(y ≻ π_t))")
    rho_w, rho_l = log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    r_w = _check_probs(chosen_win_rates, "DNO chosen win rates").to(rho_w.dtype)
    r_l = _check_probs(rejected_win_rates, "DNO rejected win rates").to(rho_w.dtype)
    _same_shape(rho_w, chosen_win_rates=r_w, rejected_win_rates=r_l)
    keep = (r_w - r_l >= margin).to(rho_w.dtype)
    q = torch.ones_like(r_w) if hard_labels else torch.sigmoid(r_w - r_l)
    logits = beta * (rho_w - rho_l)
    losses = -(q * F.logsigmoid(logits) + (1 - q) * F.logsigmoid(-logits))
    loss = (losses * keep).sum() / keep.sum().clamp(min=1.0)
    metrics = reward_metrics(rho_w, rho_l, beta)
    metrics["dno/kept_fraction"] = keep.mean().item()
    return loss, metrics


# ------------------------------------------------------------------ INPO
def inpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    prev_chosen_logps: torch.Tensor | None = None,
    prev_rejected_logps: torch.Tensor | None = None,
    eta: float = 10.0,
    tau: float = 0.01,
) -> tuple[torch.Tensor, Metrics]:
    """Return the INPO loss (mean over the batch) and metrics.

    On preference-labelled pairs (y_w ≻ y_l) of samples from π_t, with the log-ratio
    margins h_θ = ℓ_θ(y_w) − ℓ_θ(y_l), h_ref and h_t (same for π_ref and π_t):

        L_INPO = ( h_θ − τη · h_ref − (1 − τη) · h_t − η/2 )²                   (eq-ch5-inpo-loss)

    (Zhang et al. 2025, ICLR; chapter 5. The exact form is not verified against the paper.) Its population minimiser
    over labels y_w ≻ y_l drawn from P is the mirror-descent step
    π_{t+1} ∝ π_t^{1−τη} π_ref^{τη} exp(η P(y ≻ π_t)) (`nash_games.inpo_step`), without
    estimating any win rate. τη = 1 is IPO against π_ref with β = 1/η; τ = 0 is iterative
    IPO against π_t. Defaults η = 10 (IPO's β = 0.1, TRL's default) and τ = 0.01 (τη = 0.1)
    are ours: the paper's values are unverified. `prev_*` default to the reference
    (then L is IPO against π_ref whatever τ). Shapes: all inputs [B]; scalar loss.
    """
    if not 0.0 <= tau * eta <= 1.0:
        raise ValueError(f"tau·eta is the weight of π_ref in the prox term and must be in [0, 1], got {tau * eta}")
    if prev_chosen_logps is None or prev_rejected_logps is None:
        prev_chosen_logps, prev_rejected_logps = ref_chosen_logps, ref_rejected_logps
    _same_shape(policy_chosen_logps, policy_rejected_logps=policy_rejected_logps, ref_chosen_logps=ref_chosen_logps,
                ref_rejected_logps=ref_rejected_logps, prev_chosen_logps=prev_chosen_logps,
                prev_rejected_logps=prev_rejected_logps)
    mix = tau * eta
    anchor_w = mix * ref_chosen_logps + (1 - mix) * prev_chosen_logps   # log of the geometric prox centre
    anchor_l = mix * ref_rejected_logps + (1 - mix) * prev_rejected_logps
    rho_w, rho_l = policy_chosen_logps - anchor_w, policy_rejected_logps - anchor_l
    losses = (rho_w - rho_l - eta / 2) ** 2
    return losses.mean(), reward_metrics(rho_w, rho_l, 1.0 / eta)


NASH_PAIR_LOSSES = {"sppo": sppo_loss, "dno": dno_loss, "inpo": inpo_loss}
"""Name → pair loss over (policy_chosen, policy_rejected, ref_chosen, ref_rejected logps, **kwargs)."""
