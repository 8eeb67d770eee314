"""Pairwise preference losses over sequence log-probabilities (the DPO family).

Every loss here is pure: it takes the log-probabilities ℓ(y) = Σ_t m_t log π(y_t | x, y_<t)
of the chosen (y_w) and rejected (y_l) completions under the policy and the
reference, shape [B] each, and returns (loss, metrics): the mean over the batch and
TRL's reward metrics. Extra inputs a method needs (rewards, lengths, samples from
π_ref) are keyword arguments. Notation (the book's Notation page): ρ(y) = ℓ_θ(y) − ℓ_ref(y),
margin h = ρ(y_w) − ρ(y_l).

Also here, because they belong to the same chapter: `apo_extrapolate` (APO's
momentum between iterations) and `reward_augmented_relabel` (a data transform).
Online DPO needs no function of its own: it is `dpo_loss` on freshly sampled pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

Metrics = dict[str, float]


# ------------------------------------------------------------------ shared helpers
def log_ratios(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (ρ_w, ρ_l) = (ℓ_θ(y_w) − ℓ_ref(y_w), ℓ_θ(y_l) − ℓ_ref(y_l)), each [B]."""
    logps = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    shapes = {tuple(t.shape) for t in logps}
    if len(shapes) != 1:  # silent broadcasting would pair the wrong completions
        raise ValueError(f"expected four log-prob tensors of the same shape [B], got shapes {sorted(shapes)}")
    return policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps


def reward_metrics(chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, beta: float) -> Metrics:
    """Return TRL's DPO metrics of the implicit rewards β·ρ: rewards/{chosen,rejected,margins,accuracies}."""
    chosen_rewards = beta * chosen_logratio.detach()
    rejected_rewards = beta * rejected_logratio.detach()
    return {
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
    }


def _sigmoid_preference(logits: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pair −(1 − ε) log σ(z) − ε log σ(−z): BT likelihood of the labelled order, ε-smoothed."""
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


# ------------------------------------------------------------------ DPO and margin losses
def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """Return the DPO loss (mean over the batch) and TRL-named metrics.

    With ρ(y) = ℓ_θ(y) − ℓ_ref(y) and margin h = ρ(y_w) − ρ(y_l):

        L_DPO = − log σ(β h)                                     (eq-dpo-loss)

    (Rafailov et al. 2023, eq. 7). `label_smoothing` ε gives the conservative
    variant − (1 − ε) log σ(β h) − ε log σ(−β h), as in TRL's "sigmoid" loss.
    Defaults β = 0.1, ε = 0 are TRL's `DPOConfig` defaults.

    Shapes: all four inputs [B]; returns a scalar loss.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_logratio, rejected_logratio = log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                    ref_chosen_logps, ref_rejected_logps)
    losses = _sigmoid_preference(beta * (chosen_logratio - rejected_logratio), label_smoothing)
    return losses.mean(), reward_metrics(chosen_logratio, rejected_logratio, beta)


def robust_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """Return robust DPO (mean over the batch) and TRL-named metrics.

        L_rDPO = [ −(1 − ε) log σ(β h) + ε log σ(−β h) ] / (1 − 2ε)

    (Chowdhury et al. 2024, "Provably Robust DPO"; TRL loss_type="robust";
    chapter 4 lists it among DPO's variants without an equation). ε is
    the assumed rate of flipped labels; unlike conservative DPO the ε term enters with a
    + sign, which makes the loss an unbiased estimate of the clean-label DPO loss.
    ε = 0 is DPO. The default ε = 0.1 is the noise level of the paper's experiments;
    TRL's default 0 would make this plain DPO. Shapes: inputs [B]; scalar loss.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing (flip rate ε) must be in [0, 0.5), got {label_smoothing}")
    chosen_logratio, rejected_logratio = log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                    ref_chosen_logps, ref_rejected_logps)
    logits = beta * (chosen_logratio - rejected_logratio)
    eps = label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)
    return losses.mean(), reward_metrics(chosen_logratio, rejected_logratio, beta)


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """Return the IPO loss (mean over the batch) and TRL-named metrics.

        L_IPO = ( h − 1/(2β) )²                                   (eq-ipo-loss)

    (Azar et al. 2024, eq. 17, with their τ written β). It regresses the margin to the
    finite target 1/(2β) instead of pushing it to +∞, so its minimiser is h = 1/(2β).

    Length normalisation: this function uses whatever log-probs it is given. TRL 1.16
    (loss_type="ipo") divides each log-ratio by its completion length, i.e. it is this
    loss on mean-per-token log-probs ℓ̄ = ℓ / |y|; pass those to reproduce it (the parity
    test does). XPO and OpenRLHF use summed log-probs. With ℓ̄ inputs the reward metrics
    are per-token too. β = 0.1 is TRL's default. Shapes: inputs [B]; scalar loss.
    """
    chosen_logratio, rejected_logratio = log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                    ref_chosen_logps, ref_rejected_logps)
    losses = (chosen_logratio - rejected_logratio - 1 / (2 * beta)) ** 2
    return losses.mean(), reward_metrics(chosen_logratio, rejected_logratio, beta)


def hinge_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """Return the SLiC hinge loss (mean over the batch) and TRL-named metrics.

        L_hinge = max(0, 1 − β h)                                  (eq-hinge-loss)

    (Zhao et al. 2023, SLiC-HF, its calibration hinge with margin δ = 1/β, scaled by β; TRL loss_type="hinge", which
    like RSO uses the log-ratio margin h rather than SLiC's raw log-likelihoods). Pairs
    with β h ≥ 1 contribute neither loss nor gradient. β = 0.1 is TRL's default.
    Shapes: inputs [B]; scalar loss.
    """
    chosen_logratio, rejected_logratio = log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                    ref_chosen_logps, ref_rejected_logps)
    losses = torch.relu(1 - beta * (chosen_logratio - rejected_logratio))
    return losses.mean(), reward_metrics(chosen_logratio, rejected_logratio, beta)


# ------------------------------------------------------------------ f-DPO
F_DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")
_ALPHA_EXPONENT_MAX = 80.0  # exp(80) ≈ 5.5e34 still fits float32; larger (α−1)ρ would overflow to inf


def f_divergence_score(logratio: torch.Tensor, divergence: str = "reverse_kl", alpha: float = 0.5) -> torch.Tensor:
    """Return the f-DPO score s(ρ) = f'(u) (up to an additive constant), u = π_θ/π_ref = e^ρ.

        reverse_kl: ρ            forward_kl: −e^{−ρ}            js: log σ(ρ)
        alpha:      (e^{(α−1)ρ} − 1)/(α − 1), and ρ at α = 1 (its limit)

    Constants of f' cancel in s(ρ_w) − s(ρ_l), so they are dropped (the scores of eq-fdpo-loss, chapter 4;
    TRL 1.16 keeps them: 1 − e^{−ρ}, log 2 + log σ(ρ)). α follows TRL 1.16's convention
    f'(u) = (u^{α−1} − 1)/(α − 1); the paper's α_old maps to α = 1 − α_old, and α = 0 is
    forward KL.
    """
    if divergence == "reverse_kl":
        return logratio
    if divergence == "forward_kl":
        return -torch.exp(-logratio)
    if divergence == "js":
        return F.logsigmoid(logratio)
    if divergence == "alpha":
        if abs(alpha - 1.0) < 1e-6:  # (u^{α−1} − 1)/(α − 1) → log u as α → 1
            return logratio
        exponent = torch.clamp((alpha - 1.0) * logratio, max=_ALPHA_EXPONENT_MAX)
        return torch.expm1(exponent) / (alpha - 1.0)
    raise ValueError(f"unknown divergence {divergence!r}; use one of {F_DIVERGENCES}")


def f_dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    divergence: str = "reverse_kl",
    alpha: float = 0.5,
) -> tuple[torch.Tensor, Metrics]:
    """Return the f-DPO loss (mean over the batch) and TRL-named metrics.

        L_f-DPO = − log σ( β [ s(ρ_w) − s(ρ_l) ] ),   s = f'(e^ρ)            (eq-fdpo-loss)

    (Wang et al. 2023, "Beyond Reverse KL"; TRL 1.16 f_divergence_type with the
    "sigmoid" loss). `divergence` ∈ {"reverse_kl", "forward_kl", "js", "alpha"}; see
    `f_divergence_score` for s. reverse_kl is exactly `dpo_loss`. Defaults β = 0.1,
    α = 0.5 are TRL 1.16's (`f_alpha_divergence_coef`). Metrics use β·ρ as TRL does.
    Shapes: inputs [B]; scalar loss.
    """
    chosen_logratio, rejected_logratio = log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                    ref_chosen_logps, ref_rejected_logps)
    chosen_score = f_divergence_score(chosen_logratio, divergence, alpha)
    rejected_score = f_divergence_score(rejected_logratio, divergence, alpha)
    losses = _sigmoid_preference(beta * (chosen_score - rejected_score))
    return losses.mean(), reward_metrics(chosen_logratio, rejected_logratio, beta)


# ------------------------------------------------------------------ DPO + an extra likelihood term
def rpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    alpha: float = 1.0,
    chosen_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Return RPO, DPO plus α × the NLL of the chosen completions, and TRL-named metrics.

        L_RPO = L_DPO + α · NLL(y_w)                                        (eq-rpo-loss)

    (Liu et al. 2024, "Your SFT Loss is Implicitly an Adversarial Regularizer"; chapter 4.)
    Which NLL depends on `chosen_lengths` ([B], completion tokens of each y_w):

    * given: the token mean over the batch, NLL = −Σ_b ℓ_θ(y_w,b) / Σ_b |y_w,b|.
      This is TRL 1.16's `loss_type=["sigmoid", "sft"], loss_weights=[1, α]`.
    * None: the per-sequence sum, NLL = −mean_b ℓ_θ(y_w,b). With α = η·β this is the
      authors' "cumulative" form L_DPO − ηβ ℓ_θ(y_w).

    α = 0 is DPO. α = 1.0 is TRL's former `rpo_alpha` recommendation. Metrics add
    "nll_loss". Shapes: inputs [B]; scalar loss.
    """
    dpo, metrics = dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta)
    if chosen_lengths is None:
        nll = -policy_chosen_logps.mean()
    else:
        nll = -policy_chosen_logps.sum() / chosen_lengths.sum().clamp(min=1)
    metrics["nll_loss"] = nll.item()
    return dpo + alpha * nll, metrics


def xpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    alpha: float = 1e-5,
    *,
    policy_ref_sample_logps: torch.Tensor,
    preference_loss: str = "sigmoid",
) -> tuple[torch.Tensor, Metrics]:
    """Return XPO, online DPO plus an exploration bonus, and TRL-named metrics.

        L_XPO = L_pref(h) + α · mean_b ℓ_θ(y'_b),   y' ~ π_ref               (eq-ch4b-xpo)

    (Xie et al. 2024, "Exploratory Preference Optimization", Alg. 1; TRL ≤ 1.13
    `XPOTrainer`.) Minimising ℓ_θ(y') lowers the policy's likelihood of what the
    reference would say, pushing it to explore beyond π_ref's support.
    `policy_ref_sample_logps` [B] is ℓ_θ(y') of one reference sample per prompt;
    `preference_loss` is "sigmoid" (DPO) or "ipo". Defaults α = 1e-5, β = 0.1 are TRL's
    `XPOConfig`. α = 0 is online DPO. Shapes: inputs [B]; scalar loss.
    """
    base = {"sigmoid": dpo_loss, "ipo": ipo_loss}.get(preference_loss)
    if base is None:
        raise ValueError(f"unknown preference_loss {preference_loss!r}; use 'sigmoid' or 'ipo'")
    loss, metrics = base(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta)
    return loss + alpha * policy_ref_sample_logps.mean(), metrics


def selm_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.01,
    alpha: float = 0.001,
    *,
    policy_ref_sample_logps: torch.Tensor,
    ref_ref_sample_logps: torch.Tensor,
) -> tuple[torch.Tensor, Metrics]:
    """Return SELM's optimistic DPO loss and TRL-named metrics.

        L_SELM = L_DPO + α β · mean_b [ ℓ_θ(y_ref) − ℓ_ref(y_ref) ]         (eq-ch4b-selm)

    (Zhang et al. 2024, "Self-Exploring Language Models"; `optimistic_dpo_loss`
    in shenao-zhang/SELM.) y_ref is a response of the reference (previous-iteration)
    model; the inputs are its log-probs under policy and reference, [B] each. The
    gradient of the extra term is α β ∇ℓ_θ(y_ref), XPO's bonus with α_XPO = α β.
    Defaults β = 0.01, α = 0.001 are the SELM zephyr recipe's. Scalar loss.
    """
    loss, metrics = dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                             beta=beta)
    optimism = (policy_ref_sample_logps - ref_ref_sample_logps).mean()
    return loss + alpha * beta * optimism, metrics


# ------------------------------------------------------------------ per-response (non-BT) losses
def sppo_hard_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """Return hard-label SPPO (mean over the batch) and TRL-named metrics.

        L_SPPO-hard = (ρ_w − 1/(2β))² + (ρ_l + 1/(2β))²

    (Wu et al. 2024, "Self-Play Preference Optimization", eq. 4.7 with win probability
    1 for y_w and 0 for y_l; TRL loss_type="sppo_hard". With η = 1/β it is twice chapter 5's
    (eq-ch5-sppo-loss) on the pair with hard win rates P̂_w = 1, P̂_l = 0.) Minimised at ρ_w = 1/(2β),
    ρ_l = −1/(2β): margin 1/β, twice IPO's. Shapes: inputs [B]; scalar loss.
    """
    chosen_logratio, rejected_logratio = log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                    ref_chosen_logps, ref_rejected_logps)
    losses = (chosen_logratio - 1 / (2 * beta)) ** 2 + (rejected_logratio + 1 / (2 * beta)) ** 2
    return losses.mean(), reward_metrics(chosen_logratio, rejected_logratio, beta)


def nca_pair_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """Return pairwise NCA (mean over the batch) and TRL-named metrics.

        L_NCA = −log σ(βρ_w) − ½ log σ(−βρ_w) − ½ log σ(−βρ_l)

    (Chen et al. 2024, "Noise Contrastive Alignment", its K = 2 case; TRL
    loss_type="nca_pair"; chapter 4 lists it among DPO's variants without an equation.)
    It scores each response's absolute reward β ρ, so unlike
    DPO it can keep ρ_w rising. Shapes: inputs [B]; scalar loss.
    """
    chosen_logratio, rejected_logratio = log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                    ref_chosen_logps, ref_rejected_logps)
    chosen_r, rejected_r = beta * chosen_logratio, beta * rejected_logratio
    losses = -F.logsigmoid(chosen_r) - 0.5 * F.logsigmoid(-chosen_r) - 0.5 * F.logsigmoid(-rejected_r)
    return losses.mean(), reward_metrics(chosen_logratio, rejected_logratio, beta)


def bco_pair_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """Return pairwise BCO (mean over the batch) and TRL-named metrics.

        L_BCO-pair = −log σ(βρ_w) − log σ(−βρ_l)

    (Jung et al. 2024, "Binary Classifier Optimization", without its running reward
    shift δ; TRL loss_type="bco_pair"; chapter 4 lists it among DPO's variants without an equation;
    a close analogue of ASFT (`asft_loss`) that keeps π_ref.)
    Separable: each response is classified good/bad on its own. Shapes: inputs [B].
    """
    chosen_logratio, rejected_logratio = log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                    ref_chosen_logps, ref_rejected_logps)
    losses = -F.logsigmoid(beta * chosen_logratio) - F.logsigmoid(-beta * rejected_logratio)
    return losses.mean(), reward_metrics(chosen_logratio, rejected_logratio, beta)


def exo_pair_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 1e-3,
) -> tuple[torch.Tensor, Metrics]:
    """Return pairwise EXO (mean over the batch) and TRL-named metrics.

        L_EXO = KL( q ‖ p ),  q = (σ(βh), σ(−βh)),  p = (1 − ε, ε)
              = σ(βh)[log σ(βh) − log(1 − ε)] + σ(−βh)[log σ(−βh) − log ε]

    (Ji et al. 2024, "Towards Efficient Exact Optimization of LM Alignment", eq. 16 for
    K = 2; TRL loss_type="exo_pair" with label_smoothing = ε;
    chapter 4 lists it among DPO's variants without an equation.) The reverse KL to the
    ε-smoothed label makes it mode-seeking, where DPO's forward KL is mean-seeking.
    ε must be in (0, 1): at ε = 0 the loss is infinite. ε = 1e-3 is the EXO paper's
    value. Shapes: inputs [B]; scalar loss.
    """
    if not 0.0 < label_smoothing < 1.0:
        raise ValueError(f"label_smoothing ε must be in (0, 1) for EXO (log ε appears), got {label_smoothing}")
    chosen_logratio, rejected_logratio = log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                    ref_chosen_logps, ref_rejected_logps)
    logits = beta * (chosen_logratio - rejected_logratio)
    log_q_w, log_q_l = F.logsigmoid(logits), F.logsigmoid(-logits)
    losses = (log_q_w.exp() * (log_q_w - math.log1p(-label_smoothing))
              + log_q_l.exp() * (log_q_l - math.log(label_smoothing)))
    return losses.mean(), reward_metrics(chosen_logratio, rejected_logratio, beta)


def apo_zero_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """Return APO-zero (Anchored PO) and TRL-named metrics.

        L_APO-zero = 1 − σ(βρ_w) + σ(βρ_l)

    (D'Oosterlinck et al. 2024, "Anchored Preference Optimization", eq. 7; TRL
    loss_type="apo_zero"; chapter 4 lists it among DPO's variants without an equation.
    Not the Accelerated PO of `apo_extrapolate`.) Use when y_w is
    better than the model's own outputs: it raises ρ_w and lowers ρ_l. Shapes: inputs [B].
    """
    chosen_logratio, rejected_logratio = log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                    ref_chosen_logps, ref_rejected_logps)
    losses = 1 - torch.sigmoid(beta * chosen_logratio) + torch.sigmoid(beta * rejected_logratio)
    return losses.mean(), reward_metrics(chosen_logratio, rejected_logratio, beta)


def apo_down_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """Return APO-down (Anchored PO) and TRL-named metrics.

        L_APO-down = σ(βρ_w) + 1 − σ(β h)

    (D'Oosterlinck et al. 2024, eq. 8; TRL loss_type="apo_down";
    chapter 4 lists it among DPO's variants without an equation.) Use when y_w is worse
    than the model's own outputs: it lowers ρ_w, and ρ_l more. Shapes: inputs [B].
    """
    chosen_logratio, rejected_logratio = log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                    ref_chosen_logps, ref_rejected_logps)
    losses = torch.sigmoid(beta * chosen_logratio) + 1 - torch.sigmoid(beta * (chosen_logratio - rejected_logratio))
    return losses.mean(), reward_metrics(chosen_logratio, rejected_logratio, beta)


# ------------------------------------------------------------------ reference-free and reward-based losses
def _per_token(logps: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Return ℓ / |y| when the lengths are known, else the log-probs unchanged."""
    return logps if lengths is None else logps / lengths.clamp(min=1)


def asft_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 1.0,
    lam: float = 1.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Return ASFT (mean over the batch) and TRL-named metrics.

        L_ASFT = −ℓ_θ(y_w) − λ [ log σ(β ℓ̄_θ(y_w)) + log σ(−β ℓ̄_θ(y_l)) ]

    (Wang et al. 2024, "ASFT: Aligned Supervised Fine-Tuning through Absolute
    Likelihood", arXiv 2409.10571. The best-known form, not checked against the paper or
    the authors' code. The book has no equation for it; chapter 4's trade-off experiment trains it.)
    SFT on y_w plus a per-response classification of absolute likelihoods:
    no π_ref, so `ref_*_logps` are used only for the reward metrics. ℓ̄ = ℓ / |y| when
    the lengths [B] are given, else the log-probs as passed. β = 1 is that form (β
    is the scale "The Differences Between DAAs are a Blur" adds); λ = 1 is a placeholder,
    not a paper value. Shapes: inputs [B]; scalar loss.
    """
    chosen_logratio, rejected_logratio = log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                    ref_chosen_logps, ref_rejected_logps)
    chosen_bar = _per_token(policy_chosen_logps, chosen_lengths)
    rejected_bar = _per_token(policy_rejected_logps, rejected_lengths)
    align = F.logsigmoid(beta * chosen_bar) + F.logsigmoid(-beta * rejected_bar)
    losses = -policy_chosen_logps - lam * align
    return losses.mean(), reward_metrics(chosen_logratio, rejected_logratio, beta)


def cpl_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    contrastive_bias: float = 0.5,
) -> tuple[torch.Tensor, Metrics]:
    """Return CPL (mean over the batch) and TRL-named metrics.

        L_CPL = −log σ( β ℓ_θ(y_w) − λ β ℓ_θ(y_l) )

    (Hejna et al. 2024, "Contrastive Preference Learning", with the conservative
    bias λ of their `biased_bce_with_logits`; β is the paper's temperature α.
    The book has no equation for the loss: it follows from chapter 2's regret model
    (eq-regret-model) with A* = β log π; chapter 4 trains it.) The
    advantage of a segment is β Σ_t log π, so CPL has no π_ref: `ref_*_logps` are used only
    for the reward metrics. λ = 1 is reference-free DPO. Defaults β = 0.1 (`alpha`) and
    λ = 0.5 (`contrastive_bias`) are jhejna/cpl's. Shapes: inputs [B]; scalar loss.
    """
    if not 0.0 < contrastive_bias <= 1.0:
        raise ValueError(f"contrastive_bias λ must be in (0, 1], got {contrastive_bias}")
    chosen_logratio, rejected_logratio = log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                    ref_chosen_logps, ref_rejected_logps)
    losses = _sigmoid_preference(beta * policy_chosen_logps - contrastive_bias * beta * policy_rejected_logps)
    return losses.mean(), reward_metrics(chosen_logratio, rejected_logratio, beta)


def copg_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    *,
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
) -> tuple[torch.Tensor, Metrics]:
    """Return CoPG (mean over the batch) and TRL-named metrics.

        L_CoPG = ( [R(y) − βρ(y)] − [R(y') − βρ(y')] )²                     (eq-ch4b-copg)

    (Flet-Berliac et al. 2024, "Contrastive Policy Gradient", arXiv 2406.19185; chapter 4b.)
    The best-known form; its constant factor was not checked against the
    paper: we use none, so that with
    R(y) − R(y') = ½ it is exactly β² · L_IPO.) (y, y') need not be preference-ordered;
    "chosen"/"rejected" only name the two slots, with rewards [B] each. Its minimisers
    satisfy β ρ(y) − R(y) = const(x), i.e. π ∝ π_ref e^{R/β}. Shapes: inputs [B].
    """
    chosen_logratio, rejected_logratio = log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                    ref_chosen_logps, ref_rejected_logps)
    residual = (chosen_rewards - beta * chosen_logratio) - (rejected_rewards - beta * rejected_logratio)
    return (residual ** 2).mean(), reward_metrics(chosen_logratio, rejected_logratio, beta)


# ------------------------------------------------------------------ APO momentum and reward-augmented data
Tensors = torch.Tensor | dict[str, torch.Tensor]


def apo_extrapolate(new: Tensors, old: Tensors, alpha: float) -> Tensors:
    """Return APO's Nesterov extrapolation θ̂_{t+1} = θ_{t+1} + α (θ_{t+1} − θ_t).

    (He, Yuan & Gu 2024, "Accelerated Preference Optimization", Alg. 1; chapter 4b states this
    weight-space form in words under (eq-ch4b-apo), "What we implement".) `new`, `old`
    are iterates t+1 and t of iterative DPO: tensors or state dicts with equal keys.
    Non-floating entries (step counters, int buffers) are taken from `new`. α = 0
    returns θ_{t+1}. Applied to sequence log-probs of the two iterates it gives the
    log-space form (1+α) ℓ_{t+1} − α ℓ_t of chapter 4b (eq-ch4b-apo), a reference for the next round whose
    normaliser log Z cancels in h. α has no default: the paper's value is UNVERIFIED.
    """
    if isinstance(new, torch.Tensor):
        return new + alpha * (new - old) if new.is_floating_point() else new.clone()
    if set(new) != set(old):
        raise ValueError(f"state dicts differ in keys: {sorted(set(new) ^ set(old))}")
    return {name: apo_extrapolate(new[name], old[name], alpha) for name in new}


def _format_score(score: float) -> str:
    return str(int(score)) if float(score).is_integer() else str(score)  # "8", not "8.0", as the authors' script


def reward_augmented_relabel(
    rows: Iterable[dict],
    goal_template: str = "Overall score: {score}.",
    separator: str = "\n\n",
    score_format: Callable[[float], str] = _format_score,
) -> list[dict]:
    """Return reward-augmented DPO pairs: each scored pair becomes two goal-conditioned pairs.

    (Zhang et al. 2024, "Reward-Augmented Data Enhances Direct Preference Alignment";
    shenao-zhang/reward-augmented-preference `scripts/reward_augmentation.py`, its
    "_nosys" variant: the goal text is prepended to the prompt.) Each row has
    "prompt", "chosen", "rejected", "chosen_score" s_w, "rejected_score" s_l; pairs with
    s_w < s_l are dropped. The output is every copy A, then every copy B:

        A:  goal(s_w) + prompt,  chosen = y_w,  rejected = y_l
        B:  goal(s_l) + prompt,  chosen = y_l,  rejected = y_w   (flipped)

    with goal(s) = goal_template.format(score=score_format(s)) + separator, and "target_score" = s.
    Other keys are copied; the two score keys are removed. Train plain DPO on the result.
    `score_format` turns a score into goal text; with a word-level tokenizer, map scores to
    in-vocabulary words (e.g. bins named "bad" … "excellent"), or every goal may become <unk>.
    A formatter that returns a non-string raises TypeError.
    """
    kept = [r for r in rows if r["chosen_score"] >= r["rejected_score"]]

    def copy(row: dict, score: float, chosen: str, rejected: str) -> dict:
        rest = {k: v for k, v in row.items() if k not in ("chosen_score", "rejected_score")}
        text = score_format(score)
        if not isinstance(text, str):
            raise TypeError(f"score_format returned {type(text).__name__} for score {score!r}; it must return a str")
        goal = goal_template.format(score=text) + separator
        return {**rest, "prompt": goal + row["prompt"], "chosen": chosen, "rejected": rejected, "target_score": score}

    copies_a = [copy(r, r["chosen_score"], r["chosen"], r["rejected"]) for r in kept]
    copies_b = [copy(r, r["rejected_score"], r["rejected"], r["chosen"]) for r in kept]
    return copies_a + copies_b


# ------------------------------------------------------------------ registry
PAIRWISE_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, Metrics]]] = {
    "dpo": dpo_loss,
    "robust": robust_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
    "f_dpo": f_dpo_loss,
    "rpo": rpo_loss,
    "xpo": xpo_loss,
    "selm": selm_loss,
    "sppo_hard": sppo_hard_loss,
    "nca_pair": nca_pair_loss,
    "bco_pair": bco_pair_loss,
    "exo_pair": exo_pair_loss,
    "apo_zero": apo_zero_loss,
    "apo_down": apo_down_loss,
    "asft": asft_loss,
    "cpl": cpl_loss,
    "copg": copg_loss,
}
"""Name → loss; each takes (policy_chosen, policy_rejected, ref_chosen, ref_rejected logps, beta=..., **kwargs)."""


# ------------------------------------------------------------------ T-REG: token-level reward regularisation
def t_reg_weights(token_rewards: torch.Tensor, mask: torch.Tensor, tau: float, sign: float = 1.0) -> torch.Tensor:
    """Return T-REG's token weights w_t = n · softmax_t(sign · r_t / τ) over each row's n masked tokens, 0 elsewhere.

    token_rewards, mask: [B, T]. sign = +1 for chosen answers (weight on the tokens the
    token rewards call good), −1 for rejected ones (weight on the tokens they call bad).
    The weights of a row sum to n, so constant rewards (or τ → ∞) give w_t = 1.
    Computed without gradient: the weights are constants of the loss.
    """
    if tau <= 0:
        raise ValueError(f"t_reg tau (the softmax temperature of the token weights) must be > 0, got {tau}")
    if token_rewards.shape != mask.shape:
        raise ValueError(f"token rewards {tuple(token_rewards.shape)} and mask {tuple(mask.shape)} differ in shape; "
                         "give one reward per completion token, aligned with the mask")
    with torch.no_grad():
        m = mask.bool()
        logits = (sign * token_rewards.float() / tau).masked_fill(~m, float("-inf"))
        n = m.sum(-1, keepdim=True).float()
        w = torch.softmax(logits, dim=-1).nan_to_num(0.0) * n  # a row with no tokens gets weight 0
        return w * m


def t_reg_loss(
    policy_chosen_token_logps: torch.Tensor,
    policy_rejected_token_logps: torch.Tensor,
    ref_chosen_token_logps: torch.Tensor,
    ref_rejected_token_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    chosen_token_rewards: torch.Tensor,
    rejected_token_rewards: torch.Tensor,
    beta: float = 0.1,
    alpha: float = 1.0,
    tau: float = 1.0,
) -> tuple[torch.Tensor, Metrics]:
    """Return T-REG (DPO + α × a token-weighted DPO term; mean over the batch) and TRL-named metrics.

    Our reading of Zhou et al. (2024), whose exact form we could not check against the
    paper or the authors' code (chapter 4). With per-token log-ratios
    ρ_t(y) = log π_θ(y_t | x, y_<t) − log π_ref(y_t | x, y_<t) and token rewards r_t:

        w_t(y_w) = n_w · softmax_t( r_t / τ),   w_t(y_l) = n_l · softmax_t(−r_t / τ)   (eq-treg-weights)
        L_reg    = − log σ( β Σ_t w_t ρ_t(y_w) − β Σ_t w_t ρ_t(y_l) )
        L        = L_DPO + α · L_reg                                                  (eq-treg-loss)

    The weights are constants (no gradient). L_DPO uses the plain sums Σ_t ρ_t, so
    α = 0 is DPO exactly, and constant token rewards (or τ → ∞) make L_reg = L_DPO.
    L_reg's gradient on ρ_t(y_w) is −β w_t σ(−z): more push up on the chosen answer's
    high-reward tokens, and on the rejected answer's low-reward tokens.

    Shapes: token log-probs, masks and token rewards of the chosen answers [B, T_w], of
    the rejected ones [B, T_l] (masks 1 on completion tokens); returns a scalar loss.
    """
    if beta <= 0:
        raise ValueError(f"t_reg beta must be > 0, got {beta}")
    if alpha < 0:
        raise ValueError(f"t_reg alpha (the weight of the token-level term) must be ≥ 0, got {alpha}; 0 gives DPO")
    for side, tensors in (("chosen", (policy_chosen_token_logps, ref_chosen_token_logps, chosen_mask,
                                      chosen_token_rewards)),
                          ("rejected", (policy_rejected_token_logps, ref_rejected_token_logps, rejected_mask,
                                        rejected_token_rewards))):
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"t_reg: the {side} token log-probs (policy, reference), mask and token rewards must "
                             f"all be [B, T] of one shape, got {[tuple(t.shape) for t in tensors]}")
    if chosen_mask.shape[0] != rejected_mask.shape[0]:
        raise ValueError(f"t_reg: {chosen_mask.shape[0]} chosen rows but {rejected_mask.shape[0]} rejected rows")
    rho_w = (policy_chosen_token_logps - ref_chosen_token_logps) * chosen_mask
    rho_l = (policy_rejected_token_logps - ref_rejected_token_logps) * rejected_mask
    chosen_logratio, rejected_logratio = rho_w.sum(-1), rho_l.sum(-1)
    dpo = _sigmoid_preference(beta * (chosen_logratio - rejected_logratio))
    w_w = t_reg_weights(chosen_token_rewards, chosen_mask, tau, +1.0)
    w_l = t_reg_weights(rejected_token_rewards, rejected_mask, tau, -1.0)
    reg = _sigmoid_preference(beta * ((w_w * rho_w).sum(-1) - (w_l * rho_l).sum(-1)))
    loss = (dpo + alpha * reg).mean()
    metrics = reward_metrics(chosen_logratio, rejected_logratio, beta)
    metrics.update({"dpo_loss": dpo.mean().item(), "t_reg/reg_loss": reg.mean().item(),
                    "t_reg/max_weight": torch.cat([w_w.max(-1).values, w_l.max(-1).values]).mean().item()})
    return loss, metrics
