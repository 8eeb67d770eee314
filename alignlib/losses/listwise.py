"""Listwise preference losses: a prompt, K completions and a graded label for each (book chapter 6).

Every loss here is pure. Inputs are the sequence log-probs ℓ(y) of the K completions of
each list under the policy and the reference, `policy_logps` and `ref_logps`, shape [B, K],
and their labels `scores` ψ, shape [B, K] (higher = better; from a reward model, a judge,
or K − rank). Column k of all three is the same completion. Each returns (loss, metrics):
the loss summed over the list (as the papers write it) and averaged over the B lists.

Notation (the book's Notation page, chapter 6): ρ = ℓ_θ − ℓ_ref, and the model's score of completion i is
s_i = β ρ_i. "i is better than j" means ψ_i > ψ_j strictly.

Ties. Equal labels carry no preference, so tied completions are never compared with each
other: pair losses skip tied pairs, and in the Plackett–Luce losses (ListMLE, PRO) a
completion competes only with the strictly worse ones. With distinct labels every loss is
the paper's. A list whose labels are all equal gives zero loss and zero gradient under
ListMLE, LiPO-λ and the pair losses; ListNet then pulls softmax(s) towards uniform and PRO
keeps its SFT term (`alignlib.lists.load_list_rows` refuses or drops such lists). Every
loss is invariant to the order of the K columns (tests/test_listwise.py).

The completion-major batch layout of `alignlib.data.collate_examples` gives log-probs of
shape [K·B]; `alignlib.lists.list_logps` turns them into the [B, K] these losses take.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

Metrics = dict[str, float]


# ------------------------------------------------------------------ shared helpers
def list_logratios(policy_logps: torch.Tensor, ref_logps: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Return ρ = ℓ_θ − ℓ_ref, shape [B, K], after checking the three inputs describe the same lists."""
    shapes = {tuple(t.shape) for t in (policy_logps, ref_logps, scores)}
    if len(shapes) != 1:  # silent broadcasting would score one list with another's labels
        raise ValueError(f"policy_logps, ref_logps and scores must share one shape [B, K], got {sorted(shapes)}")
    if policy_logps.dim() != 2 or policy_logps.shape[1] < 2:
        raise ValueError(f"expected log-probs of shape [B, K] with K ≥ 2, got {tuple(policy_logps.shape)}")
    if not scores.is_floating_point():  # 2^ψ, softmax(ψ/T) and the pair weights need real labels
        raise ValueError(f"scores must be a floating-point tensor, got {scores.dtype}; use scores.float()")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf; validate lists with alignlib.lists.load_list_rows")
    return policy_logps - ref_logps


def better_than(scores: torch.Tensor) -> torch.Tensor:
    """Return the mask [B, K, K] whose entry (b, i, j) says ψ_i > ψ_j in list b (ties are False)."""
    return scores[:, :, None] > scores[:, None, :]


def list_metrics(logratios: torch.Tensor, scores: torch.Tensor, beta: float) -> Metrics:
    """Return TRL-named metrics of the implicit rewards β·ρ of lists, [B, K] each.

    rewards/chosen and rewards/rejected are the mean implicit reward of each list's best and
    worst completion (by ψ; ties averaged), rewards/margins their difference, and
    rewards/accuracies the fraction of ordered pairs (ψ_i > ψ_j) with β ρ_i > β ρ_j. At K = 2
    these are `pairwise.reward_metrics` of (best, worst).
    """
    rewards = beta * logratios.detach()
    best = (scores == scores.max(-1, keepdim=True).values).float()
    worst = (scores == scores.min(-1, keepdim=True).values).float()
    chosen = (rewards * best).sum(-1) / best.sum(-1)
    rejected = (rewards * worst).sum(-1) / worst.sum(-1)
    pairs = better_than(scores)
    correct = (rewards[:, :, None] > rewards[:, None, :]) & pairs
    return {
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/margins": (chosen - rejected).mean().item(),
        "rewards/accuracies": (correct.sum() / pairs.sum().clamp(min=1)).item(),
    }


def _masked_logsumexp(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Return log Σ_j exp(logits[..., j]) over the entries with keep = True (each row keeps one at least)."""
    return logits.masked_fill(~keep, float("-inf")).logsumexp(-1)


# ------------------------------------------------------------------ Plackett–Luce and softmax
def listmle_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    scores: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """Return ListMLE, the Plackett–Luce NLL of the label order under s = βρ, and metrics.

    With π the completions sorted by label, best first:

        L_ListMLE = − Σ_{k=1}^{K} log( e^{s_π(k)} / Σ_{j ≥ k} e^{s_π(j)} )        (eq-listmle-loss)

    (Xia et al. 2008, "Listwise approach to learning to rank", ListMLE; as a LiPO objective,
    Liu et al. 2024. Also DPO's own Plackett–Luce extension, Rafailov
    et al. 2023, App. A.3.) Written per completion, the denominator of i runs over i and the
    completions strictly worse than i; with distinct labels that is exactly the sum above,
    and with tied labels tied completions stay out of each other's denominators (module
    docstring). K = 2 gives DPO's −log σ(β h) (chapter 6). β = 0.1 is DPO's default (TRL); LiPO's
    own β was not checked. Shapes: inputs [B, K]; scalar loss.
    """
    logratios = list_logratios(policy_logps, ref_logps, scores)
    s = beta * logratios
    competitors = better_than(scores) | torch.eye(s.shape[1], dtype=torch.bool, device=s.device)
    per_completion = _masked_logsumexp(s[:, None, :].expand(-1, s.shape[1], -1), competitors) - s
    return per_completion.sum(-1).mean(), list_metrics(logratios, scores, beta)


def listnet_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    scores: torch.Tensor,
    beta: float = 0.1,
    label_temperature: float = 1.0,
    target: str = "softmax",
) -> tuple[torch.Tensor, Metrics]:
    """Return the softmax (ListNet) list loss, a cross-entropy over the list, and metrics.

        L_softmax = − Σ_i p_i log softmax(s)_i,   p = softmax(ψ / T)              (eq-listnet-loss)

    (Cao et al. 2007, ListNet, top-one probabilities; LiPO's "Softmax" objective, Liu et al.
    2024, whose target form we did not check against the paper.) `target="normalized"`
    uses p = ψ / Σψ instead (TF-Ranking's softmax loss; needs ψ ≥ 0 with Σψ > 0) and ignores T.
    T = `label_temperature` = 1 is our choice, not a paper value: labels on a wide scale
    want a larger T. At K = 2 this is conservative DPO, −(1 − ε) log σ(βh) − ε log σ(−βh),
    with ε = p_worse = σ(−(ψ_1 − ψ_2)/T) (ψ_2/(ψ_1 + ψ_2) for "normalized"); T → 0 gives DPO. Shapes: inputs [B, K]; scalar loss.
    """
    logratios = list_logratios(policy_logps, ref_logps, scores)
    if target == "softmax":
        if label_temperature <= 0:
            raise ValueError(f"label_temperature must be > 0, got {label_temperature}")
        p = torch.softmax(scores / label_temperature, dim=-1)
    elif target == "normalized":
        if (scores < 0).any() or (scores.sum(-1) <= 0).any():
            raise ValueError("target='normalized' needs scores ≥ 0 with a positive sum in every list")
        p = scores / scores.sum(-1, keepdim=True)
    else:
        raise ValueError(f"unknown target {target!r}; use 'softmax' or 'normalized'")
    losses = -(p * torch.log_softmax(beta * logratios, dim=-1)).sum(-1)
    return losses.mean(), list_metrics(logratios, scores, beta)


# ------------------------------------------------------------------ LiPO-λ
def lambda_weights(scores: torch.Tensor, model_scores: torch.Tensor) -> torch.Tensor:
    """Return the LambdaLoss weights Δ [B, K, K] of LiPO-λ (zero off the ordered pairs ψ_i > ψ_j).

        Δ_ij = |G_i − G_j| · |1/D(τ_i) − 1/D(τ_j)|,   G = 2^ψ − 1,   D(τ) = log₂(1 + τ)   (eq-lipo-lambda-weight)

    τ_i is the 1-based rank of completion i when the list is sorted by `model_scores`
    (descending). Ties in the model's scores are broken by the labels, best first: at the
    first step π_θ = π_ref makes every s equal, and these weights are then those of the
    ideal order (not of whatever order the list was stored in, which would break
    permutation invariance). Computed without gradient: ranks are piecewise constant, and
    we treat Δ as a constant.
    """
    with torch.no_grad():
        by_label = scores.argsort(dim=-1, descending=True, stable=True)
        order = by_label.gather(-1, model_scores.gather(-1, by_label).argsort(dim=-1, descending=True, stable=True))
        rank = order.argsort(-1) + 1                              # rank[b, order[b, p]] = p + 1
        gain = torch.exp2(scores) - 1
        inv_discount = 1.0 / torch.log2(1.0 + rank.to(scores.dtype))
        delta = ((gain[:, :, None] - gain[:, None, :]).abs()
                 * (inv_discount[:, :, None] - inv_discount[:, None, :]).abs())
        return delta * better_than(scores)


def lipo_lambda_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    scores: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """Return LiPO-λ, the lambda-weighted pairwise logistic loss over each list, and metrics.

        L_LiPO-λ = − Σ_{i,j: ψ_i > ψ_j} Δ_ij log σ(s_i − s_j),   s = β ρ             (eq-lipo-lambda-loss)

    with Δ from `lambda_weights` (Liu et al. 2024, "LiPO", the LiPO-λ objective, built on the
    LambdaLoss of Wang et al. 2018; the gain and discount are LambdaLoss's standard forms, not
    checked against the LiPO paper, nor were its equation numbers). τ is the rank under the
    current s = βρ of the policy being trained; Δ is detached (no gradient flows through
    the ranks or the gains), so the gradient is Σ Δ_ij ∇[−log σ(s_i − s_j)]. The gain
    2^ψ − 1 makes the weights depend on the label scale: ψ in a few units (ranks, or
    scores in [0, 1]) keeps them moderate. At K = 2 it is DPO times the constant
    Δ_12 = |G_1 − G_2| (1 − 1/log₂3) (chapter 6). β = 0.1 as in DPO. Metrics add
    "lambda_weight": the mean Δ over ordered pairs. Shapes: inputs [B, K]; scalar loss.
    """
    logratios = list_logratios(policy_logps, ref_logps, scores)
    s = beta * logratios
    delta = lambda_weights(scores, s.detach())
    losses = -(delta * F.logsigmoid(s[:, :, None] - s[:, None, :])).sum((1, 2))
    metrics = list_metrics(logratios, scores, beta)
    metrics["lambda_weight"] = (delta.sum() / better_than(scores).sum().clamp(min=1)).item()
    return losses.mean(), metrics


# ------------------------------------------------------------------ PRO
def pro_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    scores: torch.Tensor,
    beta: float = 0.1,
    sft_weight: float = 2.0,
    lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Return PRO, Plackett–Luce over prefixes with reward-gap temperatures plus SFT, and metrics.

    With s_k = ℓ_θ(y_k)/|y_k| and the completions sorted so that r_1 ≥ … ≥ r_K (r = ψ):

        L_k  = − log[ e^{s_k T_k^k} / ( e^{s_k T_k^k} + Σ_{i>k} e^{s_i T_k^i} ) ],
        T_k^i = r_k − r_i,   T_k^k = max_{i>k} T_k^i
        L_PRO = Σ_{k=1}^{K−1} L_k + w (K − 1)² · (−ℓ_θ(y_1))                       (eq-pro-loss)

    (Song et al. 2024, "Preference Ranking Optimization for Human Alignment", AAAI, §3; its
    equation numbers were not checked. The form is checked against the authors' code, DAMO-ConvAI
    PRO/train/utils/process_manager.py
    `compute_loss`, where the SFT term uses the summed log-prob of the data's `sft_index`
    response; here that is the best-labelled one, tied best ones averaged.) No reference
    model: `ref_logps` and β only feed the logged implicit rewards β·ρ. `lengths` [B, K] are
    the completion token counts; None uses ℓ as given (pass ℓ̄ yourself). The labels set the
    temperatures, so their scale matters as a β would. With distinct labels this is the
    authors' loss (their 1e-10 inside the log aside); with ties, the "i > k" sets hold only
    strictly worse completions and a completion with none below it adds no term. K = 2, w = 0
    gives −log σ((r_1 − r_2)(s_1 − s_2)), a reference-free, length-normalised DPO with β = r_1 − r_2
    (chapter 6). w = sft_weight = 2 is the authors' default (PRO/train/utils/config.py).
    Metrics add "nll_loss", the SFT term's −ℓ_θ(y_1) before weighting. Shapes: [B, K]; scalar.
    """
    logratios = list_logratios(policy_logps, ref_logps, scores)
    s = policy_logps if lengths is None else policy_logps / lengths.clamp(min=1)
    worse = better_than(scores)                                   # worse[b, k, i]: i is below k
    gaps = (scores[:, :, None] - scores[:, None, :]).masked_fill(~worse, 0.0)   # T_k^i
    top_gap = gaps.max(-1).values                                 # T_k^k (0 where nothing is below)
    logits = s[:, None, :] * gaps                                 # s_i T_k^i
    eye = torch.eye(s.shape[1], dtype=torch.bool, device=s.device)
    logits = torch.where(eye, (s * top_gap)[:, :, None], logits)  # the diagonal holds s_k T_k^k
    per_prefix = _masked_logsumexp(logits, worse | eye) - s * top_gap
    rank_loss = (per_prefix * worse.any(-1)).sum(-1)              # no term for a completion with none below
    best = (scores == scores.max(-1, keepdim=True).values).float()
    nll = -(policy_logps * best).sum(-1) / best.sum(-1)
    k = s.shape[1]
    losses = rank_loss + sft_weight * (k - 1) ** 2 * nll
    metrics = list_metrics(logratios, scores, beta)
    metrics["nll_loss"] = nll.mean().item()
    return losses.mean(), metrics


# ------------------------------------------------------------------ pairwise baselines from lists
PAIR_MODES = ("best_worst", "all_pairs")


def list_pair_weights(scores: torch.Tensor, mode: str = "best_worst") -> torch.Tensor:
    """Return weights [B, K, K] on ordered pairs (i better than j) that sum to 1 in every list with a preference.

    best_worst: the pair (best, worst) by label; tied best or worst completions share the
    weight. all_pairs: every pair with ψ_i > ψ_j, equally. A list with all labels equal gets
    all-zero weights.
    """
    pairs = better_than(scores)
    if mode == "best_worst":
        is_best = scores == scores.max(-1, keepdim=True).values
        is_worst = scores == scores.min(-1, keepdim=True).values
        pairs = pairs & is_best[:, :, None] & is_worst[:, None, :]
    elif mode != "all_pairs":
        raise ValueError(f"unknown mode {mode!r}; use one of {PAIR_MODES}")
    pairs = pairs.to(scores.dtype)
    return pairs / pairs.sum((1, 2), keepdim=True).clamp(min=1)


def pairwise_from_list_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    scores: torch.Tensor,
    beta: float = 0.1,
    mode: str = "best_worst",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """Return DPO on pairs built from each list, averaged per list then over lists, and metrics.

        L = Σ_{i,j: ψ_i > ψ_j} w_ij · [ −log σ(β (ρ_i − ρ_j)) ],   Σ w_ij = 1 per list   (eq-list-pairs-dpo)

    with w from `list_pair_weights`: best_worst puts all weight on (best, worst), the usual
    way to turn a list into one DPO pair; all_pairs spreads it over the K(K−1)/2 ordered pairs
    of a tie-free list (Rafailov et al. 2023's DPO, eq. 7, on pairs; LiPO's pairwise
    baselines, Liu et al. 2024). `label_smoothing` ε as in `pairwise.dpo_loss`. At K = 2
    both modes are `dpo_loss`. β = 0.1 is TRL's default. Shapes: inputs [B, K]; scalar loss.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    logratios = list_logratios(policy_logps, ref_logps, scores)
    margins = beta * (logratios[:, :, None] - logratios[:, None, :])
    per_pair = -(1 - label_smoothing) * F.logsigmoid(margins) - label_smoothing * F.logsigmoid(-margins)
    losses = (list_pair_weights(scores, mode) * per_pair).sum((1, 2))
    return losses.mean(), list_metrics(logratios, scores, beta)


# ------------------------------------------------------------------ registry
LISTWISE_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, Metrics]]] = {
    "listmle": listmle_loss,
    "listnet": listnet_loss,
    "lipo_lambda": lipo_lambda_loss,
    "pro": pro_loss,
    "dpo_best_worst": partial(pairwise_from_list_loss, mode="best_worst"),
    "dpo_all_pairs": partial(pairwise_from_list_loss, mode="all_pairs"),
}
"""Name → loss; each takes (policy_logps, ref_logps, scores) of shape [B, K], beta=..., **kwargs."""

LAMBDA_WEIGHT_K2 = 1.0 - 1.0 / math.log2(3.0)
"""Δ_12 / |G_1 − G_2| at K = 2: the constant by which LiPO-λ and DPO differ (chapter 6), ≈ 0.369."""
