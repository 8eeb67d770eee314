"""Properties of the pure losses in `alignlib.losses` (METHODS.md §3.1 and Appendix A1).

DPO: with ρ = ℓ_θ − ℓ_ref and margin h = ρ(y_w) − ρ(y_l), L = −log σ(βh), and the
conservative variant −(1−ε) log σ(βh) − ε log σ(−βh). SFT: mean NLL per completion token.
"""

from __future__ import annotations

import math

import pytest
import torch

from alignlib.data import collate, tokenize_rows
from alignlib.logprobs import sequence_logprobs
from alignlib.losses import dpo_loss, sft_loss

BETAS = (0.01, 0.1, 0.5, 1.0, 5.0)


def _from_margin(h: torch.Tensor):
    """Four log-prob tensors whose DPO margin is exactly `h` (policy_chosen carries it, the rest are 0)."""
    zeros = torch.zeros_like(h)
    return h, zeros.clone(), zeros.clone(), zeros.clone()


def _reference_loss(h: float, beta: float, eps: float = 0.0) -> float:
    """Conservative DPO computed independently, in float64 with math: −(1−ε) log σ(βh) − ε log σ(−βh)."""

    def log_sigmoid(z: float) -> float:  # stable: log σ(z) = −log(1 + e^{−z})
        return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))

    return -(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h)


# ------------------------------------------------------------------ DPO value
@pytest.mark.parametrize("beta", BETAS)
def test_dpo_loss_at_zero_margin_is_log2(beta):
    """L(h = 0) = log 2 for every β, even when the four log-probs themselves are far from 0."""
    # ρ_w = −3 − (−1) = −2 and ρ_l = −5 − (−3) = −2, so h = 0 although every log-ratio is non-zero.
    pc, pr = torch.tensor([-3.0, -10.0]), torch.tensor([-5.0, -12.5])
    rc, rr = torch.tensor([-1.0, -4.0]), torch.tensor([-3.0, -6.5])
    loss, _ = dpo_loss(pc, pr, rc, rr, beta=beta)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.parametrize("beta", BETAS)
def test_dpo_loss_matches_formula_away_from_zero(beta):
    """For non-zero margins the loss equals −log σ(βh) averaged over the batch (checked against math, float64)."""
    hs = [-7.0, -1.0, 0.25, 3.0, 20.0]
    loss, _ = dpo_loss(*_from_margin(torch.tensor(hs, dtype=torch.float64)), beta=beta)
    expected = sum(_reference_loss(h, beta) for h in hs) / len(hs)
    assert loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


# --------------------------------------------------------------- DPO gradient
@pytest.mark.parametrize("beta", BETAS)
def test_dpo_gradient_wrt_margin(beta):
    """∂L/∂h = −β σ(−βh) for each pair (divided by B because the loss is the batch mean)."""
    h = torch.tensor([-8.0, -2.0, -0.5, 0.0, 0.5, 2.0, 8.0], dtype=torch.float64, requires_grad=True)
    loss, _ = dpo_loss(*_from_margin(h), beta=beta)
    (grad,) = torch.autograd.grad(loss, h)
    expected = -beta * torch.sigmoid(-beta * h.detach()) / h.numel()
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-14)


def test_dpo_gradients_of_the_four_inputs_are_tied():
    """The loss depends on the four log-probs only through h = (pc − rc) − (pr − rr), so
    ∂L/∂pc = −∂L/∂pr = −∂L/∂rc = ∂L/∂rr, and that common value is −βσ(−βh)/B (non-zero)."""
    g = torch.Generator().manual_seed(0)
    inputs = [(-20 * torch.rand(6, generator=g, dtype=torch.float64)).requires_grad_() for _ in range(4)]
    pc, pr, rc, rr = inputs
    beta = 0.3
    loss, _ = dpo_loss(pc, pr, rc, rr, beta=beta)
    d_pc, d_pr, d_rc, d_rr = torch.autograd.grad(loss, inputs)
    torch.testing.assert_close(d_pc, -d_pr)
    torch.testing.assert_close(d_pc, -d_rc)
    torch.testing.assert_close(d_pc, d_rr)
    h = (pc - rc - pr + rr).detach()
    torch.testing.assert_close(d_pc, -beta * torch.sigmoid(-beta * h) / 6)
    assert (d_pc < 0).all()


# ------------------------------------------------------------ DPO invariances
def _random_logps(seed: int, n: int = 5):
    g = torch.Generator().manual_seed(seed)
    return [-30 * torch.rand(n, generator=g, dtype=torch.float64) for _ in range(4)]


@pytest.mark.parametrize("c", [-50.0, -1.5, 3.0, 100.0])
def test_dpo_invariant_to_shifts_that_keep_the_margin(c):
    """Adding the same constant to all four log-probs, to both chosen terms (pc, rc) or to both policy
    terms (pc, pr) leaves h, hence the loss and the margin metrics, unchanged; shifting pc alone does not."""
    pc, pr, rc, rr = _random_logps(1)
    base, base_metrics = dpo_loss(pc, pr, rc, rr, beta=0.2)
    for shifted in [(pc + c, pr + c, rc + c, rr + c), (pc + c, pr, rc + c, rr), (pc + c, pr + c, rc, rr)]:
        loss, metrics = dpo_loss(*shifted, beta=0.2)
        assert loss.item() == pytest.approx(base.item(), rel=1e-12, abs=1e-12)
        assert metrics["rewards/margins"] == pytest.approx(base_metrics["rewards/margins"], abs=1e-9)
        assert metrics["rewards/accuracies"] == base_metrics["rewards/accuracies"]
    # control: a shift that changes h must change the loss (so the checks above are not vacuous)
    moved, _ = dpo_loss(pc + c, pr, rc, rr, beta=0.2)
    assert abs(moved.item() - base.item()) > 1e-3


# --------------------------------------------------------- label smoothing ε
@pytest.mark.parametrize("eps", [0.0, 0.05, 0.2, 0.49])
@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_dpo_label_smoothing_matches_conservative_dpo(eps, beta):
    """With label_smoothing ε the loss is −(1−ε) log σ(βh) − ε log σ(−βh) (computed independently)."""
    pc, pr, rc, rr = _random_logps(2, n=7)
    loss, _ = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps)
    hs = (pc - rc - (pr - rr)).tolist()
    expected = sum(_reference_loss(h, beta, eps) for h in hs) / len(hs)
    assert loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_dpo_label_smoothing_changes_the_loss():
    """ε > 0 really enters the loss (guards against the argument being ignored)."""
    pc, pr, rc, rr = _random_logps(3)
    plain, _ = dpo_loss(pc, pr, rc, rr, beta=0.5)
    smoothed, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.2)
    assert abs(plain.item() - smoothed.item()) > 1e-3


@pytest.mark.parametrize("eps", [-0.1, 0.5, 0.7, 1.0])
def test_dpo_label_smoothing_out_of_range_raises(eps):
    """ε must lie in [0, 0.5): at 0.5 the loss no longer prefers either answer; beyond it flips the labels."""
    z = torch.zeros(2)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(z, z, z, z, label_smoothing=eps)


# ------------------------------------------------------------------- metrics
def test_dpo_metrics_on_a_hand_example():
    """rewards/* are β·(ℓ_θ − ℓ_ref) means; accuracy counts strict wins (a tie is not a win), as in TRL."""
    beta = 0.5
    pc = torch.tensor([-1.0, -2.0, -4.0])
    pr = torch.tensor([-3.0, -1.0, -4.0])
    rc = torch.tensor([-2.0, -2.0, -3.0])
    rr = torch.tensor([-2.0, -2.0, -3.0])
    # log-ratios: chosen [1, 0, −1], rejected [−1, 1, −1]
    # rewards:    chosen [0.5, 0, −0.5], rejected [−0.5, 0.5, −0.5]
    # margins [1, −0.5, 0] → mean 1/6; wins [1, 0, 0 (tie)] → 1/3
    _, m = dpo_loss(pc, pr, rc, rr, beta=beta)
    assert m["rewards/chosen"] == pytest.approx(0.0, abs=1e-7)
    assert m["rewards/rejected"] == pytest.approx(-1 / 6, abs=1e-7)
    assert m["rewards/margins"] == pytest.approx(1 / 6, abs=1e-7)
    assert m["rewards/accuracies"] == pytest.approx(1 / 3, abs=1e-7)


# ----------------------------------------------------------------------- SFT
def test_sft_loss_on_a_hand_example():
    """Mean over *tokens* (not sequences): masked-out entries are ignored wherever they are."""
    token_logps = torch.tensor([[-1.0, -2.0, -99.0], [-3.0, -99.0, -99.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss, metrics = sft_loss(token_logps, mask)
    assert loss.item() == pytest.approx(2.0)  # (1 + 2 + 3) / 3, not ((1+2)/2 + 3)/2 = 2.25
    assert metrics["tokens"] == 3


def test_sft_loss_equals_transformers_causal_lm_loss(pocket_reviews, reviews_world):
    """On a collated batch, our SFT loss equals LlamaForCausalLM's own loss when labels are the input ids
    with prompt and pad positions set to −100 (both average over completion tokens)."""
    model, tokenizer = pocket_reviews
    rows = [{"prompt": ex.prompt, "completion": ex.completion} for ex in reviews_world.sft_examples(6, seed=3)]
    examples = tokenize_rows(rows, tokenizer, "sft")
    batch = collate([(ex.prompt_ids, ex.completions[0]) for ex in examples], tokenizer.pad_token_id)
    assert (batch["attention_mask"] == 0).any(), "the batch should contain padding"

    with torch.no_grad():
        _, token_lp, mask = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"],
                                              batch["completion_mask"])
        ours, _ = sft_loss(token_lp, mask)
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
        # control: counting the prompt tokens too gives a different number
        all_labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        with_prompt = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            labels=all_labels).loss
    assert abs(ours.item() - theirs.item()) <= 1e-5, (ours.item(), theirs.item())
    assert abs(with_prompt.item() - theirs.item()) > 1e-3
