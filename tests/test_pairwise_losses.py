"""The DPO family in `alignlib.losses.pairwise` (METHODS.md ch. 3 and Appendix A).

Two kinds of test:

* TRL parity: for every loss TRL 1.16's `DPOConfig(loss_type=...)` also has, build a real
  `trl.DPOTrainer` on the pocket model (as tests/test_trl_parity.py does, reusing its
  fixtures), take one batch, and compare `trainer.compute_loss` with our loss on our own
  `sequence_logprobs` of the same batch, to 1e-5.
* Properties: identities, minimisers, limits and gradient signs of each loss, on raw
  tensors in float64.
"""

from __future__ import annotations

import math

import pytest
import test_trl_parity
import torch
import torch.nn.functional as F

from alignlib.logprobs import sequence_logprobs
from alignlib.losses.pairwise import (
    PAIRWISE_LOSSES,
    apo_extrapolate,
    asft_loss,
    bco_pair_loss,
    copg_loss,
    cpl_loss,
    dpo_loss,
    exo_pair_loss,
    f_dpo_loss,
    hinge_loss,
    ipo_loss,
    reward_augmented_relabel,
    robust_loss,
    rpo_loss,
    selm_loss,
    sppo_hard_loss,
    xpo_loss,
)

# the pocket policy/reference and the 8 preference rows of the DPO parity tests, and their trainer factory
policy_and_ref, rows, _trainer = test_trl_parity.policy_and_ref, test_trl_parity.rows, test_trl_parity._trainer

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

TOL = 1e-5
METRIC_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
MAX_DIFF: dict[str, float] = {}  # filled by the parity tests, printed by the last test (pytest -s)


# ================================================================== TRL parity
def _logps(policy, ref, batch):
    """Our [2B] sequence log-probs of a TRL batch (chosen rows first) and the completion lengths."""
    lp, _, mask = sequence_logprobs(policy, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    with torch.no_grad():
        ref_lp, _, _ = sequence_logprobs(ref, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    lengths = mask.sum(-1)
    assert torch.equal(lengths, batch["completion_mask"].sum(-1).float())  # the first token is never a completion token
    return lp, ref_lp, lengths


def _split(t):
    b = t.shape[0] // 2
    return t[:b], t[b:]


def _summed(lp, ref_lp, lengths):
    (pc, pr), (rc, rr) = _split(lp), _split(ref_lp)
    return (pc, pr, rc, rr), {}


def _per_token(lp, ref_lp, lengths):
    """TRL's IPO divides each log-ratio by its completion length: feed ℓ / |y| (METHODS.md §3.2)."""
    return _summed(lp / lengths, ref_lp / lengths, lengths)


def _with_chosen_lengths(lp, ref_lp, lengths):
    args, _ = _summed(lp, ref_lp, lengths)
    return args, {"chosen_lengths": _split(lengths)[0]}


# name: (TRL DPOConfig kwargs, our function, our kwargs, inputs builder, compare TRL's reward metrics)
PARITY_CASES = {
    "sigmoid": ({"loss_type": "sigmoid"}, dpo_loss, {}, _summed, True),
    "ipo": ({"loss_type": "ipo"}, ipo_loss, {}, _per_token, False),  # our metrics would be per-token
    "hinge": ({"loss_type": "hinge"}, hinge_loss, {}, _summed, True),
    "robust": ({"loss_type": "robust", "label_smoothing": 0.2}, robust_loss, {"label_smoothing": 0.2}, _summed, True),
    "exo_pair": ({"loss_type": "exo_pair", "label_smoothing": 1e-3}, exo_pair_loss, {"label_smoothing": 1e-3},
                 _summed, True),
    "nca_pair": ({"loss_type": "nca_pair"}, PAIRWISE_LOSSES["nca_pair"], {}, _summed, True),
    "bco_pair": ({"loss_type": "bco_pair"}, bco_pair_loss, {}, _summed, True),
    "sppo_hard": ({"loss_type": "sppo_hard"}, sppo_hard_loss, {}, _summed, True),
    "apo_zero": ({"loss_type": "apo_zero"}, PAIRWISE_LOSSES["apo_zero"], {}, _summed, True),
    "apo_down": ({"loss_type": "apo_down"}, PAIRWISE_LOSSES["apo_down"], {}, _summed, True),
    "f_dpo_forward_kl": ({"f_divergence_type": "forward_kl"}, f_dpo_loss, {"divergence": "forward_kl"}, _summed, True),
    "f_dpo_js": ({"f_divergence_type": "js_divergence"}, f_dpo_loss, {"divergence": "js"}, _summed, True),
    "f_dpo_alpha_0.5": ({"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.5}, f_dpo_loss,
                        {"divergence": "alpha", "alpha": 0.5}, _summed, True),
    "f_dpo_alpha_0.2": ({"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.2}, f_dpo_loss,
                        {"divergence": "alpha", "alpha": 0.2}, _summed, True),
    "rpo": ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}, rpo_loss,
            {"alpha": 0.5}, _with_chosen_lengths, True),
}


@pytest.mark.parametrize("beta", [0.1, 2.0])
@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_loss_parity_with_trl(policy_and_ref, rows, tmp_path, case, beta):
    """|TRL DPOTrainer.compute_loss − ours| ≤ 1e-5 on the same batch, and TRL's reward metrics agree."""
    trl_kwargs, loss_fn, our_kwargs, inputs, check_metrics = PARITY_CASES[case]
    trainer, policy, ref = _trainer(policy_and_ref, rows, tmp_path, beta=beta, **trl_kwargs)
    batch = next(iter(trainer.get_train_dataloader()))
    theirs = trainer.compute_loss(trainer.model, batch)

    lp, ref_lp, lengths = _logps(policy, ref, batch)
    args, extra = inputs(lp, ref_lp, lengths)
    kwargs = {**our_kwargs, **extra}
    ours, metrics = loss_fn(*args, beta=beta, **kwargs)

    # the batch is informative: with the policy as its own reference (ρ = 0) the loss differs
    at_zero, _ = loss_fn(args[0], args[1], args[0].detach(), args[1].detach(), beta=beta, **kwargs)
    assert abs(ours.item() - at_zero.item()) > 1e-4

    diff = abs(ours.item() - theirs.item())
    MAX_DIFF[f"{case}, beta={beta}"] = diff
    assert diff <= TOL, f"{case}: ours={ours.item():.8f} trl={theirs.item():.8f}"
    if check_metrics:
        mode = "train" if trainer.model.training else "eval"
        trl_metrics = {k: v[-1] for k, v in trainer._metrics[mode].items()}
        for key in METRIC_KEYS:
            assert metrics[key] == pytest.approx(trl_metrics[key], abs=1e-5), key


def test_hinge_parity_batch_has_inactive_pairs(policy_and_ref, rows, tmp_path):
    """At β = 2 some pairs of the parity batch have βh ≥ 1, so the hinge's flat side is exercised too."""
    trainer, policy, ref = _trainer(policy_and_ref, rows, tmp_path, beta=2.0)
    batch = next(iter(trainer.get_train_dataloader()))
    lp, ref_lp, _ = _logps(policy, ref, batch)
    (pc, pr), (rc, rr) = _split(lp.detach()), _split(ref_lp)
    h = (pc - rc) - (pr - rr)
    assert ((2.0 * h) >= 1).any() and ((2.0 * h) < 1).any(), h


# ================================================================== properties
def _random_logps(b=64, seed=0, scale=3.0, requires_grad=False):
    """Four [B] float64 log-prob tensors (negative, as log-probs are)."""
    g = torch.Generator().manual_seed(seed)
    ts = [-(scale * torch.rand(b, generator=g, dtype=torch.float64)) - 0.1 for _ in range(4)]
    return [t.requires_grad_(requires_grad) for t in ts]


def _from_logratios(rho_w, rho_l):
    """Log-probs with the given log-ratios (the reference carries arbitrary non-zero values)."""
    ref_w, ref_l = torch.full_like(rho_w, -2.0), torch.full_like(rho_l, -3.0)
    return rho_w + ref_w, rho_l + ref_l, ref_w, ref_l


def _extra_kwargs(name, b):
    """The keyword inputs some losses need, for a batch of b pairs."""
    zeros = torch.zeros(b, dtype=torch.float64)
    return {
        "xpo": {"policy_ref_sample_logps": zeros - 1.0},
        "selm": {"policy_ref_sample_logps": zeros - 1.0, "ref_ref_sample_logps": zeros - 2.0},
        "copg": {"chosen_rewards": zeros + 1.0, "rejected_rewards": zeros},
    }.get(name, {})


@pytest.mark.parametrize("name", list(PAIRWISE_LOSSES))
def test_registry_common_signature(name):
    """Every registered loss takes (4 logps, beta=, **kwargs) and returns a finite scalar and TRL's metric keys."""
    logps = _random_logps(8)
    loss, metrics = PAIRWISE_LOSSES[name](*logps, beta=0.1, **_extra_kwargs(name, 8))
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert set(METRIC_KEYS) <= set(metrics)


def test_registry_rejects_mismatched_shapes():
    a, b, c, d = _random_logps(8)
    with pytest.raises(ValueError, match="same shape"):
        ipo_loss(a, b[:4], c, d)


# names whose chosen log-prob gradient is negative near ρ = 0 (apo_down lowers y_w by design: excluded)
CHOSEN_UP = [n for n in PAIRWISE_LOSSES if n != "apo_down"]


@pytest.mark.parametrize("name", list(PAIRWISE_LOSSES))
def test_gradient_signs_near_reference(name):
    """Near ρ = 0 each loss raises ℓ_θ(y_w) (∂L/∂ℓ_w < 0) and lowers ℓ_θ(y_l) (∂L/∂ℓ_l > 0).

    Near the reference every loss is on its "still learning" side: IPO, SPPO below target,
    hinge below margin, NCA with βρ_w < log 2, EXO below its optimum z = log((1−ε)/ε).
    """
    g = torch.Generator().manual_seed(1)
    rho_w, rho_l = (0.2 * torch.randn(32, generator=g, dtype=torch.float64) for _ in range(2))
    pc, pr, rc, rr = _from_logratios(rho_w, rho_l)
    pc.requires_grad_(True), pr.requires_grad_(True)
    loss, _ = PAIRWISE_LOSSES[name](pc, pr, rc, rr, beta=0.1, **_extra_kwargs(name, 32))
    grad_w, grad_l = torch.autograd.grad(loss, (pc, pr))
    if name in CHOSEN_UP:
        assert (grad_w < 0).all(), grad_w
    assert (grad_l > 0).all(), grad_l


# ------------------------------------------------------------------ DPO, robust DPO (§3.1)
def test_dpo_swap_identity_and_shift_invariance():
    """L(h) − L(−h) = −βh pair by pair, and adding c to both log-ratios changes nothing (§3.1 checks)."""
    beta = 0.3
    pc, pr, rc, rr = _random_logps(16)

    def per_pair(*logps):
        return torch.stack([dpo_loss(*(t[i:i + 1] for t in logps), beta=beta)[0] for i in range(16)])

    h = (pc - rc) - (pr - rr)
    torch.testing.assert_close(per_pair(pc, pr, rc, rr) - per_pair(pr, pc, rr, rc), -beta * h)
    torch.testing.assert_close(dpo_loss(pc + 0.7, pr + 0.7, rc, rr, beta=beta)[0],
                               dpo_loss(pc, pr, rc, rr, beta=beta)[0])


def test_dpo_small_beta_limit():
    """As β → 0, L_DPO = log 2 − β·mean(h)/2 + O(β²)."""
    pc, pr, rc, rr = _random_logps(16)
    h = ((pc - rc) - (pr - rr)).mean()
    for beta in (1e-3, 1e-4):
        loss, _ = dpo_loss(pc, pr, rc, rr, beta=beta)
        assert abs((loss.item() - math.log(2)) / beta + h.item() / 2) < 10 * beta * (h.abs().item() + 1) ** 2


def test_robust_is_unbiased_for_flipped_labels():
    """rDPO's defining property: E_flip[L_rob] = (1−ε) L_rob(h) + ε L_rob(−h) = L_DPO(h); ε = 0 is DPO."""
    pc, pr, rc, rr = _random_logps(16)
    for eps in (0.1, 0.3):
        expected = (1 - eps) * robust_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=eps)[0] \
            + eps * robust_loss(pr, pc, rr, rc, beta=0.5, label_smoothing=eps)[0]
        torch.testing.assert_close(expected, dpo_loss(pc, pr, rc, rr, beta=0.5)[0])
    torch.testing.assert_close(robust_loss(pc, pr, rc, rr, label_smoothing=0.0)[0], dpo_loss(pc, pr, rc, rr)[0])
    with pytest.raises(ValueError):
        robust_loss(pc, pr, rc, rr, label_smoothing=0.5)


# ------------------------------------------------------------------ IPO (§3.2, A2)
@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0])
def test_ipo_minimised_at_half_inverse_beta(beta):
    """L_IPO = 0 with zero gradient at h = 1/(2β) (A2), larger either side, and ∂L/∂h = 2(h − 1/(2β))."""
    target = 1 / (2 * beta)
    for h, expected_grad in ((target, 0.0), (target + 0.3, 0.6), (target - 0.3, -0.6)):
        rho_w = torch.tensor([h + 0.4], dtype=torch.float64, requires_grad=True)
        loss, _ = ipo_loss(*_from_logratios(rho_w, torch.tensor([0.4], dtype=torch.float64)), beta=beta)
        (grad,) = torch.autograd.grad(loss, rho_w)
        assert loss.item() == pytest.approx((h - target) ** 2, abs=1e-12)
        assert grad.item() == pytest.approx(expected_grad, abs=1e-9)


def test_ipo_small_beta_limit():
    """As β → 0 the target 1/(2β) dominates: β² L_IPO = (βh − ½)² → ¼."""
    pc, pr, rc, rr = _random_logps(8)
    assert (1e-4 ** 2) * ipo_loss(pc, pr, rc, rr, beta=1e-4)[0].item() == pytest.approx(0.25, abs=1e-3)


# ------------------------------------------------------------------ hinge
def test_hinge_zero_beyond_margin_and_linear_below():
    """relu(1 − βh): 0 loss and 0 gradient where βh ≥ 1; 1 − βh and gradient −β/B below."""
    beta = 0.5
    h = torch.tensor([-1.0, 0.0, 1.0, 2.0, 2.5, 4.0], dtype=torch.float64)
    rho_w = (h + 0.1).requires_grad_(True)
    loss, _ = hinge_loss(*_from_logratios(rho_w, torch.full_like(h, 0.1)), beta=beta)
    (grad,) = torch.autograd.grad(loss, rho_w)
    active = beta * h < 1
    assert loss.item() == pytest.approx(torch.where(active, 1 - beta * h, 0.0).mean().item())
    torch.testing.assert_close(grad, torch.where(active, -beta / len(h), 0.0).to(torch.float64))
    loss_all_inactive, _ = hinge_loss(*_from_logratios(h[3:] + 0.1, torch.full_like(h[3:], 0.1)), beta=beta)
    assert loss_all_inactive.item() == 0.0


# ------------------------------------------------------------------ f-DPO (§3.3, A3, A4)
def test_f_dpo_reverse_kl_equals_dpo_exactly():
    logps = _random_logps(32)
    for beta in (0.1, 1.0):
        assert torch.equal(f_dpo_loss(*logps, beta=beta, divergence="reverse_kl")[0], dpo_loss(*logps, beta=beta)[0])


def test_f_dpo_alpha_limits():
    """α-divergence (TRL 1.16 convention): α = 1 is DPO, α = 0 is forward KL, α near 1 is close to DPO."""
    logps = _random_logps(32)
    dpo = dpo_loss(*logps)[0]
    torch.testing.assert_close(f_dpo_loss(*logps, divergence="alpha", alpha=1.0)[0], dpo)
    torch.testing.assert_close(f_dpo_loss(*logps, divergence="alpha", alpha=1.0 - 1e-4)[0], dpo, rtol=0, atol=1e-4)
    torch.testing.assert_close(f_dpo_loss(*logps, divergence="alpha", alpha=0.0)[0],
                               f_dpo_loss(*logps, divergence="forward_kl")[0])


@pytest.mark.parametrize("alpha_old", [0.3, 0.5, 1.0])
def test_f_dpo_old_alpha_convention_maps_to_new(alpha_old):
    """A3: the paper / TRL-old logits (u_l^{−α} − u_w^{−α})/α equal the new form at α = 1 − α_old."""
    beta = 0.2
    pc, pr, rc, rr = _random_logps(16)
    rho_w, rho_l = pc - rc, pr - rr
    old_logits = (torch.exp(-alpha_old * rho_l) - torch.exp(-alpha_old * rho_w)) / alpha_old
    expected = -F.logsigmoid(beta * old_logits).mean()
    new_form, _ = f_dpo_loss(pc, pr, rc, rr, beta=beta, divergence="alpha", alpha=1 - alpha_old)
    torch.testing.assert_close(new_form, expected)


def test_f_dpo_js_matches_old_form():
    """A4: JS scores log σ(ρ_w) − log σ(ρ_l) = h − (softplus(ρ_w) − softplus(ρ_l)), TRL-old's form."""
    beta = 0.7
    pc, pr, rc, rr = _random_logps(16)
    rho_w, rho_l = pc - rc, pr - rr
    old_logits = (rho_w - rho_l) - (F.softplus(rho_w) - F.softplus(rho_l))
    torch.testing.assert_close(f_dpo_loss(pc, pr, rc, rr, beta=beta, divergence="js")[0],
                               -F.logsigmoid(beta * old_logits).mean())


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "js", "alpha"])
def test_f_dpo_small_beta_is_log2(divergence):
    loss, _ = f_dpo_loss(*_random_logps(8), beta=1e-6, divergence=divergence)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)


def test_f_dpo_unknown_divergence():
    with pytest.raises(ValueError, match="unknown divergence"):
        f_dpo_loss(*_random_logps(4), divergence="hellinger")


# ------------------------------------------------------------------ RPO, XPO, SELM (§3.4, §3.7, §3.12, A5, A6)
def test_rpo_alpha_zero_is_dpo_and_adds_nll_gradient():
    """A5: α = 0 is DPO exactly; the extra gradient on ℓ_θ(y_w) is −α/B (sequence NLL) or −α/Σ|y_w| (token NLL)."""
    pc, pr, rc, rr = _random_logps(8, requires_grad=True)
    lengths = torch.arange(1, 9, dtype=torch.float64)
    assert torch.equal(rpo_loss(pc, pr, rc, rr, alpha=0.0)[0], dpo_loss(pc, pr, rc, rr)[0])
    (g_dpo,) = torch.autograd.grad(dpo_loss(pc, pr, rc, rr)[0], pc)
    (g_seq,) = torch.autograd.grad(rpo_loss(pc, pr, rc, rr, alpha=0.3)[0], pc)
    (g_tok,) = torch.autograd.grad(rpo_loss(pc, pr, rc, rr, alpha=0.3, chosen_lengths=lengths)[0], pc)
    torch.testing.assert_close(g_seq - g_dpo, torch.full_like(pc, -0.3 / 8))
    torch.testing.assert_close(g_tok - g_dpo, torch.full_like(pc, -0.3 / lengths.sum().item()))
    _, metrics = rpo_loss(pc, pr, rc, rr, chosen_lengths=lengths)
    assert metrics["nll_loss"] == pytest.approx(-pc.sum().item() / lengths.sum().item())


def test_xpo_and_selm_reduce_to_dpo_and_share_bonus_gradient():
    """α = 0 gives (online) DPO for both; A6: SELM's extra gradient = XPO's with α_XPO = α_SELM·β."""
    logps = _random_logps(8)
    sample = torch.linspace(-5, -1, 8, dtype=torch.float64, requires_grad=True)
    ref_sample = torch.linspace(-4, -2, 8, dtype=torch.float64)
    dpo = dpo_loss(*logps, beta=0.1)[0]
    assert torch.equal(xpo_loss(*logps, beta=0.1, alpha=0.0, policy_ref_sample_logps=sample)[0], dpo)
    assert torch.equal(selm_loss(*logps, beta=0.1, alpha=0.0, policy_ref_sample_logps=sample,
                                 ref_ref_sample_logps=ref_sample)[0], dpo)
    alpha, beta = 0.05, 0.1
    (g_selm,) = torch.autograd.grad(selm_loss(*logps, beta=beta, alpha=alpha, policy_ref_sample_logps=sample,
                                              ref_ref_sample_logps=ref_sample)[0], sample)
    (g_xpo,) = torch.autograd.grad(xpo_loss(*logps, beta=beta, alpha=alpha * beta, policy_ref_sample_logps=sample)[0],
                                   sample)
    torch.testing.assert_close(g_selm, g_xpo)
    assert (g_xpo > 0).all()  # minimising raises the loss of π_ref's samples → lowers their likelihood
    ipo_based = xpo_loss(*logps, beta=0.1, alpha=0.0, policy_ref_sample_logps=sample, preference_loss="ipo")[0]
    assert torch.equal(ipo_based, ipo_loss(*logps, beta=0.1)[0])


# ------------------------------------------------------------------ SPPO-hard, EXO, NCA, BCO, APO-zero/down
def test_sppo_hard_minimiser_and_swap():
    """A7: zero loss and gradient at ρ_w = 1/(2β), ρ_l = −1/(2β); symmetric under (ρ_w, ρ_l) → (−ρ_l, −ρ_w)."""
    beta = 0.25
    rho_w = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
    rho_l = torch.tensor([-2.0], dtype=torch.float64, requires_grad=True)
    loss, _ = sppo_hard_loss(*_from_logratios(rho_w, rho_l), beta=beta)
    assert loss.item() == 0.0 and all(g.item() == 0.0 for g in torch.autograd.grad(loss, (rho_w, rho_l)))
    a, b = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    torch.testing.assert_close(sppo_hard_loss(*_from_logratios(a, b), beta=beta)[0],
                               sppo_hard_loss(*_from_logratios(-b, -a), beta=beta)[0])


def test_exo_zero_at_smoothed_label_and_needs_positive_eps():
    """KL(q‖p) = 0 where q = p, i.e. βh = log((1−ε)/ε); ε = 0 would be infinite, so it is rejected."""
    beta, eps = 0.5, 0.01
    h = torch.tensor([math.log((1 - eps) / eps) / beta], dtype=torch.float64)
    loss, _ = exo_pair_loss(*_from_logratios(h + 0.2, torch.tensor([0.2], dtype=torch.float64)), beta=beta,
                            label_smoothing=eps)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert exo_pair_loss(*_random_logps(8), beta=beta, label_smoothing=eps)[0].item() > 0
    with pytest.raises(ValueError):
        exo_pair_loss(*_random_logps(4), label_smoothing=0.0)


@pytest.mark.parametrize("name", ["nca_pair", "bco_pair", "apo_zero"])
def test_per_response_losses_values_at_reference(name):
    """At ρ = 0 (σ = ½): NCA = 2 log 2, BCO-pair = 2 log 2, APO-zero = 1 — the formulas, term by term."""
    zeros = torch.zeros(4, dtype=torch.float64)
    loss, _ = PAIRWISE_LOSSES[name](*_from_logratios(zeros, zeros), beta=0.3)
    expected = {"nca_pair": 2 * math.log(2), "bco_pair": 2 * math.log(2), "apo_zero": 1.0}[name]
    assert loss.item() == pytest.approx(expected)


def test_apo_down_lowers_both_but_rejected_more():
    """APO-down's gradient on a pair at h > 0: it pushes ρ_w down (∂L/∂ρ_w > 0) once βh is large."""
    rho_w = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    rho_l = torch.tensor([-30.0], dtype=torch.float64, requires_grad=True)
    loss, _ = PAIRWISE_LOSSES["apo_down"](*_from_logratios(rho_w, rho_l), beta=0.5)
    grad_w, grad_l = torch.autograd.grad(loss, (rho_w, rho_l))
    assert grad_w.item() > 0 and grad_l.item() > 0


# ------------------------------------------------------------------ ASFT, CPL, CoPG (§3.5, §3.6, §3.10, A10, A11)
def test_reference_free_losses_ignore_reference():
    """ASFT and CPL have no π_ref: changing the reference log-probs leaves the loss unchanged."""
    pc, pr, rc, rr = _random_logps(8)
    for fn in (asft_loss, cpl_loss):
        assert torch.equal(fn(pc, pr, rc, rr)[0], fn(pc, pr, rc - 1.0, rr + 2.0)[0])


def test_asft_is_separable():
    """Not a BT loss: per pair L(w, l) = f(w) + g(l), so L(w1,l1) + L(w2,l2) = L(w1,l2) + L(w2,l1)."""
    w, l = torch.tensor([-2.0, -5.0], dtype=torch.float64), torch.tensor([-3.0, -1.5], dtype=torch.float64)
    z = torch.zeros(2, dtype=torch.float64)
    lengths = torch.tensor([3.0, 4.0], dtype=torch.float64)
    same = asft_loss(w, l, z, z, lam=0.7, chosen_lengths=lengths, rejected_lengths=lengths)[0]
    swapped = asft_loss(w, l.flip(0), z, z, lam=0.7, chosen_lengths=lengths, rejected_lengths=lengths.flip(0))[0]
    torch.testing.assert_close(same, swapped)
    # λ = 0 is SFT on y_w (summed NLL)
    torch.testing.assert_close(asft_loss(w, l, z, z, lam=0.0)[0], -w.mean())


def test_cpl_with_unit_bias_is_reference_free_dpo():
    """A10: λ = 1 gives −log σ(α(ℓ_w − ℓ_l)) = DPO with a zero reference and β = α."""
    pc, pr, rc, rr = _random_logps(16)
    zeros = torch.zeros_like(pc)
    torch.testing.assert_close(cpl_loss(pc, pr, rc, rr, beta=0.3, contrastive_bias=1.0)[0],
                               dpo_loss(pc, pr, zeros, zeros, beta=0.3)[0])
    expected = -F.logsigmoid(0.3 * pc - 0.5 * 0.3 * pr).mean()
    torch.testing.assert_close(cpl_loss(pc, pr, rc, rr, beta=0.3, contrastive_bias=0.5)[0], expected)


def test_copg_generalises_ipo_and_is_slot_symmetric():
    """A11: with R(y) − R(y') = ½, L_CoPG = β² L_IPO; swapping the two slots and their rewards changes nothing."""
    beta = 0.2
    pc, pr, rc, rr = _random_logps(16)
    r = torch.randn(16, dtype=torch.float64)
    torch.testing.assert_close(copg_loss(pc, pr, rc, rr, beta=beta, chosen_rewards=r + 0.5, rejected_rewards=r)[0],
                               beta ** 2 * ipo_loss(pc, pr, rc, rr, beta=beta)[0])
    r2 = torch.randn(16, dtype=torch.float64)
    torch.testing.assert_close(copg_loss(pc, pr, rc, rr, beta=beta, chosen_rewards=r, rejected_rewards=r2)[0],
                               copg_loss(pr, pc, rr, rc, beta=beta, chosen_rewards=r2, rejected_rewards=r)[0])


def test_copg_minimised_at_tilted_optimum():
    """Zero loss where βρ(y) − R(y) is the same for both responses (π ∝ π_ref e^{R/β})."""
    beta = 0.5
    rewards_w, rewards_l = torch.tensor([1.0, 3.0], dtype=torch.float64), torch.tensor([0.0, -1.0], dtype=torch.float64)
    const = torch.tensor([0.2, -0.4], dtype=torch.float64)
    loss, _ = copg_loss(*_from_logratios((rewards_w + const) / beta, (rewards_l + const) / beta), beta=beta,
                        chosen_rewards=rewards_w, rejected_rewards=rewards_l)
    assert loss.item() == pytest.approx(0.0, abs=1e-20)


# ------------------------------------------------------------------ APO momentum (§3.8)
def test_apo_extrapolate_on_state_dicts():
    """α = 0 returns θ_{t+1}; α = 1 gives 2θ_{t+1} − θ_t; integer buffers come from θ_{t+1}; keys must match."""
    torch.manual_seed(0)
    old, new = torch.nn.Linear(3, 2).state_dict(), torch.nn.Linear(3, 2).state_dict()
    old["steps"], new["steps"] = torch.tensor(4), torch.tensor(5)
    same = apo_extrapolate(new, old, alpha=0.0)
    assert all(torch.equal(same[k], new[k]) for k in new)
    pushed = apo_extrapolate(new, old, alpha=1.0)
    torch.testing.assert_close(pushed["weight"], 2 * new["weight"] - old["weight"])
    assert pushed["steps"].item() == 5
    with pytest.raises(ValueError, match="keys"):
        apo_extrapolate(new, {k: v for k, v in old.items() if k != "bias"}, alpha=0.5)


def test_apo_extrapolate_on_logps_gives_log_space_reference():
    """On log-probs it is (1+α)ℓ_{t+1} − αℓ_t, and the unknown normaliser log Z cancels in the DPO loss."""
    new, old = torch.tensor([-2.0, -4.0]), torch.tensor([-3.0, -3.5])
    torch.testing.assert_close(apo_extrapolate(new, old, alpha=0.5), 1.5 * new - 0.5 * old)
    pc, pr = torch.tensor([-1.0]), torch.tensor([-2.5])
    ref_w, ref_l = apo_extrapolate(new[:1], old[:1], 0.5), apo_extrapolate(new[1:], old[1:], 0.5)
    torch.testing.assert_close(dpo_loss(pc, pr, ref_w, ref_l)[0], dpo_loss(pc, pr, ref_w - 1.3, ref_l - 1.3)[0])


# ------------------------------------------------------------------ reward-augmented data (§3.9)
def test_reward_augmented_relabel_rows():
    """Each kept pair → copy A (goal s_w, same order) and copy B (goal s_l, flipped); s_w < s_l dropped, ties kept."""
    scored = [
        {"id": 0, "prompt": "Review:", "chosen": " good", "rejected": " bad",
         "chosen_score": 8.0, "rejected_score": 3.5},
        {"id": 1, "prompt": "Q", "chosen": " a", "rejected": " b", "chosen_score": 2, "rejected_score": 6},  # dropped
        {"id": 2, "prompt": "P", "chosen": " x", "rejected": " y", "chosen_score": 5, "rejected_score": 5},   # tie kept
    ]
    out = reward_augmented_relabel(scored)
    assert out == [
        {"id": 0, "prompt": "Overall score: 8.\n\nReview:", "chosen": " good", "rejected": " bad", "target_score": 8.0},
        {"id": 2, "prompt": "Overall score: 5.\n\nP", "chosen": " x", "rejected": " y", "target_score": 5},
        {"id": 0, "prompt": "Overall score: 3.5.\n\nReview:", "chosen": " bad", "rejected": " good",
         "target_score": 3.5},
        {"id": 2, "prompt": "Overall score: 5.\n\nP", "chosen": " y", "rejected": " x", "target_score": 5},
    ]
    assert scored[0]["prompt"] == "Review:"  # pure: the input rows are untouched
    short = reward_augmented_relabel(scored[:1], goal_template="score {score}", separator=" | ")
    assert short[1]["prompt"] == "score 3.5 | Review:"


def test_print_parity_summary():
    """Not a check: prints the largest |ours − TRL| per case seen above (visible with `pytest -s`)."""
    if MAX_DIFF:
        worst = max(MAX_DIFF, key=MAX_DIFF.get)
        print("\nTRL parity |diff|:", {k: f"{v:.1e}" for k, v in MAX_DIFF.items()},
              f"\nmax {MAX_DIFF[worst]:.2e} ({worst})")


# the loop's path: TrainConfig(loss_type=...) → methods.dpo_step, on TRL's own batch
LOOP_CASES = {
    "ipo": ({"loss_type": "ipo"}, {"loss_type": "ipo"}),
    "rpo": ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}, {"loss_type": "rpo", "rpo_alpha": 0.5}),
    "f_dpo_js": ({"f_divergence_type": "js_divergence"}, {"loss_type": "f_dpo", "f_divergence_type": "js"}),
    "robust": ({"loss_type": "robust", "label_smoothing": 0.2}, {"loss_type": "robust", "label_smoothing": 0.2}),
}


@pytest.mark.parametrize("case", list(LOOP_CASES))
def test_loop_step_matches_trl(policy_and_ref, rows, tmp_path, case):
    """`--method dpo --loss_type X` computes TRL's loss for X (incl. IPO's per-token log-probs, RPO's token-mean NLL)."""
    from alignlib.config import TrainConfig
    from alignlib.methods import StepContext, dpo_step
    from alignlib.models import Reference

    trl_kwargs, our_config = LOOP_CASES[case]
    trainer, policy, ref = _trainer(policy_and_ref, rows, tmp_path, beta=0.5, **trl_kwargs)
    batch = next(iter(trainer.get_train_dataloader()))
    theirs = trainer.compute_loss(trainer.model, batch).item()
    config = TrainConfig(method="dpo", beta=0.5, **our_config)
    ours, _ = dpo_step(StepContext(model=policy, reference=Reference(ref), config=config), batch)
    assert ours.item() == pytest.approx(theirs, abs=1e-5)


def test_config_refuses_losses_that_need_online_inputs():
    from alignlib.config import TrainConfig

    with pytest.raises(ValueError, match="xpo.*samples from π_ref.*online pair mode provide"):
        TrainConfig(method="dpo", loss_type="xpo")
    with pytest.raises(ValueError, match="unknown loss_type 'dpop'"):
        TrainConfig(method="dpo", loss_type="dpop")
