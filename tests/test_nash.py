"""Nash learning: the intransitive world, exact tabular game tools and the Nash / self-play losses."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from alignlib import nash_games as ng
from alignlib.losses.nash import (
    dno_loss,
    estimated_win_rates,
    geometric_mixture_logits,
    inpo_loss,
    nash_md_policy_gradient_loss,
    sppo_loss,
)
from alignlib.losses.pairwise import dpo_loss, sppo_hard_loss
from alignlib.worlds import get_world
from alignlib.worlds.intransitive import STYLES, IntransitiveWorld, style_of

RPS = ng.cyclic_preference_matrix(3, 1.0)
X = "describe the lake :"


@pytest.fixture(scope="module")
def world():
    return get_world("intransitive")


def random_game(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.triu(rng.uniform(-0.5, 0.5, (n, n)), 1)
    return 0.5 + a - a.T


# ------------------------------------------------------------------ the world
def test_style_game_is_intransitive_and_not_bradley_terry(world):
    """The style matrix has a strict cycle, and the best scalar-reward fit explains none of it
    (relative residual 1), while a genuine BT matrix is fitted exactly."""
    assert ng.find_cycle(world.style_matrix) is not None
    _, residual = ng.bt_fit(world.style_matrix)
    assert residual > 0.99
    r = np.array([0.0, 0.7, 2.0])
    bt = 1 / (1 + np.exp(-(r[:, None] - r[None, :])))
    r_hat, bt_residual = ng.bt_fit(bt)
    assert ng.find_cycle(bt) is None and bt_residual < 1e-9
    np.testing.assert_allclose(r_hat, r - r.mean(), atol=1e-9)


def test_gold_oracle_cycles_on_real_responses(world):
    """On concrete top-quality strings the gold oracle itself is cyclic: plain ≻ poetic ≻ playful ≻ plain."""
    best = [world.best_response(X, s) for s in range(len(STYLES))]
    probs = world.preference_probability([X] * 3, best, best[1:] + best[:1])
    assert all(p > 0.5 for p in probs)
    assert world.gold_verdict([X] * 3, best, best[1:] + best[:1]) == [1.0, 1.0, 1.0]


def test_gold_preference_is_symmetric_and_in_range(world):
    """P(a ≻ b) + P(b ≻ a) = 1 and P(a ≻ a) = ½ on SFT samples, mixtures and junk."""
    ex = world.sft_examples(60, seed=3)
    extra = ["the lake is quiet . the lake glows softly .", "", "lake lake lake", "the river is quiet ."]
    responses = [e.completion for e in ex] + extra
    prompts = [X] * len(responses)
    shuffled = responses[7:] + responses[:7]
    ab = np.array(world.preference_probability(prompts, responses, shuffled))
    ba = np.array(world.preference_probability(prompts, shuffled, responses))
    np.testing.assert_allclose(ab + ba, 1.0, atol=1e-12)
    assert ((ab >= 0) & (ab <= 1)).all()
    np.testing.assert_allclose(world.preference_probability(prompts, responses, responses), 0.5)


def test_prompt_splits_disjoint_and_sft_deterministic(world):
    train, evals = world.prompts("train"), world.prompts("eval")
    assert train and evals and not set(train) & set(evals)
    assert world.sft_examples(50, seed=1) == world.sft_examples(50, seed=1)
    assert world.sft_examples(50, seed=1) != world.sft_examples(50, seed=2)
    with pytest.raises(ValueError, match="unknown split"):
        world.prompts("test")


def test_styles_recognised_and_sft_skewed(world):
    """Every demonstration is grammatical, top quality, in one recognised style; the SFT mix is
    skewed to plain, so the SFT policy is exploitable (by playful)."""
    ex = world.sft_examples(3000, seed=0)
    assert all(world.is_grammatical(e.prompt, e.completion) for e in ex)
    assert set(world.gold_reward([e.prompt for e in ex], [e.completion for e in ex])) == {1.0}
    dist = world.style_distribution([e.completion for e in ex])
    assert dist[-1] == 0.0 and dist[0] > 0.6 and dist[2] > 0.05
    assert world.style_exploitability(dist) > 0.1
    for s in range(len(STYLES)):
        assert style_of(world.best_response(X, s)) == s
    assert style_of("the lake is quiet . the lake glows softly .") is None  # mixed
    assert style_of("hello there") is None


def test_sampled_exploitability_matches_style_formula_and_brute_force(world):
    """The world's exploitability of a response set equals the style-matrix formula (top quality)
    and the brute-force max over many concrete challengers."""
    ex = world.sft_examples(200, seed=5)
    prompts, responses = [e.prompt for e in ex], [e.completion for e in ex]
    e_world = world.exploitability(prompts, responses)
    assert e_world == pytest.approx(world.style_exploitability(world.style_distribution(responses)))
    challengers = [e.completion for e in world.sft_examples(40, seed=9)] + ["the lake is quiet . the lake is epic ."]
    brute = max(np.mean(world.preference_probability(prompts, [c] * len(prompts), responses)) for c in challengers)
    assert brute - 0.5 <= e_world + 1e-12


def test_quality_lowers_preference(world):
    """Same style, worse quality (repeats, off topic, broken grammar) loses; gold_reward is quality only."""
    good, repeated, off, broken = ("the lake is quiet .", "the lake is quiet . the lake is quiet .",
                                   "the river is quiet .", "the lake is")
    q = world.gold_reward([X] * 4, [good, repeated, off, broken])
    assert q[0] == 1.0 and all(v < 1.0 for v in q[1:])
    assert all(p < 0.5 for p in world.preference_probability([X] * 3, [repeated, off, broken], [good] * 3))


def test_out_of_range_oracle_raises():
    """A preference oracle giving a value outside [0, 1] is rejected with a clear message,
    in the world's preference code and in the tabular matrix builder."""

    class Broken(IntransitiveWorld):
        def _style_probability(self, a, b):
            return 1.7

    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        Broken().preference_probability([X], ["the lake is quiet ."], ["the lake glows softly ."])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        ng.preference_matrix(lambda a, b: a - b, [0.0, 2.0])
    with pytest.raises(ValueError, match="P\\[i, j\\] \\+ P\\[j, i\\] = 1"):
        ng.validate_preference_matrix([[0.5, 0.9], [0.9, 0.5]])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        estimated_win_rates(torch.full((1, 2, 2), 1.5))


# ------------------------------------------------------------------ exact game tools
def test_exploitability_matches_brute_force():
    """max_y P(y ≻ π) − ½ equals the largest P(π' ≻ π) − ½ over a fine grid of mixed challengers."""
    P = random_game(3, seed=4)
    grid = [np.array([i, j, 40 - i - j]) / 40 for i in range(41) for j in range(41 - i)]
    for pi in (np.array([0.2, 0.5, 0.3]), np.array([1.0, 0.0, 0.0]), np.ones(3) / 3):
        brute = max(c @ P @ pi for c in grid) - 0.5
        assert ng.exploitability(P, pi) == pytest.approx(brute, abs=1e-12)
        assert ng.exploitability(P, pi) >= -1e-12


def test_nash_equilibrium_exact_on_rps_and_random_games():
    np.testing.assert_allclose(ng.nash_equilibrium(RPS), np.ones(3) / 3, atol=1e-12)
    np.testing.assert_allclose(ng.nash_equilibrium(ng.cyclic_preference_matrix(5, 0.8)), np.ones(5) / 5, atol=1e-12)
    supports = []
    for seed in range(6):
        P = random_game(7, seed)
        pi = ng.nash_equilibrium(P)
        assert ng.exploitability(P, pi) <= 1e-6
        supports.append((pi > 1e-9).sum())
    assert max(supports) >= 3  # some of these games have a genuinely mixed equilibrium


def test_regularized_equilibrium_is_a_fixed_point():
    """π*_τ = softmax(log μ + Pπ*/τ); as τ → 0 its exploitability → 0."""
    mu = np.array([0.7, 0.2, 0.1])
    P = ng.cyclic_preference_matrix(3, 0.9)
    exps = []
    for tau in (0.5, 0.1, 0.02):
        pi = ng.regularized_nash_equilibrium(P, mu, tau)
        target = np.exp(np.log(mu) + P @ pi / tau)
        np.testing.assert_allclose(pi, target / target.sum(), atol=1e-9)
        exps.append(ng.exploitability(P, pi))
    assert exps[0] > exps[1] > exps[2] and exps[2] < 0.03


# ------------------------------------------------------------------ tabular dynamics
START = np.array([0.8, 0.15, 0.05])
THRESHOLD = 0.01  # last-iterate exploitability a converging method must reach on RPS


def test_self_play_last_iterate_cycles_while_nash_md_converges():
    """On rock–paper–scissors plain self-play never settles (the last iterate stays exploitable over
    the last 500 of 3000 steps), fictitious play converges only on average, and Nash-MD's last
    iterate reaches the uniform equilibrium (exploitability < 0.01)."""
    uniform = np.ones(3) / 3
    gd = ng.exploitability_curve(RPS, ng.gradient_self_play(RPS, START, lr=0.1, steps=3000))
    mwu = ng.exploitability_curve(RPS, ng.multiplicative_weights(RPS, START, eta=0.5, steps=3000))
    plays, avgs = ng.fictitious_play(RPS, START, steps=3000)
    fp_last, fp_avg = ng.exploitability_curve(RPS, plays), ng.exploitability_curve(RPS, avgs)
    nmd_traj = ng.nash_md(RPS, START, uniform, eta=0.5, tau=0.1, steps=3000)
    nmd = ng.exploitability_curve(RPS, nmd_traj)
    inpo_curve = ng.exploitability_curve(RPS, ng.inpo(RPS, START, uniform, eta=0.5, tau=0.1, steps=3000))
    for curve in (gd, mwu, fp_last):
        assert curve[-500:].min() > 10 * THRESHOLD
    assert fp_avg[-1] < THRESHOLD
    assert nmd[-500:].max() < THRESHOLD and inpo_curve[-500:].max() < THRESHOLD
    np.testing.assert_allclose(nmd_traj[-1], uniform, atol=1e-6)


def test_nash_md_reaches_regularized_equilibrium_with_skewed_reference():
    """With an SFT-like reference Nash-MD's last iterate lands within O(η) of π*_τ; INPO's exactly on it."""
    mu, P, tau = np.array([0.7, 0.2, 0.1]), ng.cyclic_preference_matrix(3, 0.9), 0.1
    target = ng.regularized_nash_equilibrium(P, mu, tau)
    nmd = ng.nash_md(P, mu, mu, eta=0.1, tau=tau, steps=4000)[-1]
    inp = ng.inpo(P, mu, mu, eta=0.1, tau=tau, steps=4000)[-1]
    assert np.abs(nmd - target).sum() < 0.02
    np.testing.assert_allclose(inp, target, atol=1e-8)


# ------------------------------------------------------------------ losses
def _logps(*values):
    return [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]


def test_sppo_hard_label_limit_equals_sppo_hard():
    """With P̂_w = 1 and P̂_l = 0, SPPO's loss (authors' ½ included) is ½ × TRL's sppo_hard."""
    torch.manual_seed(0)
    args = [torch.randn(6, dtype=torch.float64) for _ in range(4)]
    for beta in (0.1, 0.5, 2.0):
        soft, _ = sppo_loss(*args, beta=beta, chosen_win_rates=torch.ones(6), rejected_win_rates=torch.zeros(6))
        hard, _ = sppo_hard_loss(*args, beta=beta)
        torch.testing.assert_close(2 * soft, hard)


def test_sppo_targets_and_gradient_signs():
    pw, pl, rw, rl = _logps([0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0])
    wins, loses = torch.tensor([0.9, 0.5]), torch.tensor([0.2, 0.5])
    loss, _ = sppo_loss(pw, pl, rw, rl, beta=0.5, chosen_win_rates=wins, rejected_win_rates=loses)
    loss.backward()
    assert pw.grad[0] < 0 and pl.grad[0] > 0           # raise the winner, lower the loser
    assert pw.grad[1] == 0 and pl.grad[1] == 0         # P̂ = ½: stay at π_t
    at_target = sppo_loss(torch.tensor([0.8]), torch.tensor([-0.6]), torch.zeros(1), torch.zeros(1), beta=0.5,
                          chosen_win_rates=torch.tensor([0.9]), rejected_win_rates=torch.tensor([0.2]))[0]
    assert at_target.item() == pytest.approx(0.0)


def test_dno_hard_labels_equal_dpo_and_margin_filters():
    torch.manual_seed(1)
    args = [torch.randn(8, dtype=torch.float64) for _ in range(4)]
    r_w, r_l = torch.rand(8, dtype=torch.float64), torch.rand(8, dtype=torch.float64) * 0.5
    hard, _ = dno_loss(*args, beta=0.3, chosen_win_rates=r_w, rejected_win_rates=r_l, hard_labels=True,
                       margin=-1.0)
    torch.testing.assert_close(hard, dpo_loss(*args, beta=0.3)[0])
    keep = r_w - r_l >= 0.3
    filtered, m = dno_loss(*args, beta=0.3, chosen_win_rates=r_w, rejected_win_rates=r_l, hard_labels=True,
                           margin=0.3)
    torch.testing.assert_close(filtered, dpo_loss(*[a[keep] for a in args], beta=0.3)[0])
    assert m["dno/kept_fraction"] == pytest.approx(keep.double().mean().item())
    pw, pl, rw, rl = _logps([0.0], [0.0], [0.0], [0.0])
    dno_loss(pw, pl, rw, rl, chosen_win_rates=torch.tensor([0.8]), rejected_win_rates=torch.tensor([0.3]))[0].backward()
    assert pw.grad[0] < 0 < pl.grad[0]


def test_inpo_limits_and_gradient_signs():
    """τη = 1 is IPO against π_ref (β = 1/η); the gradient raises y_w while h < η/2."""
    torch.manual_seed(2)
    pw, pl, rw, rl, tw, tl = [torch.randn(5, dtype=torch.float64) for _ in range(6)]
    eta = 4.0
    ipo_like = ((pw - pl) - (rw - rl) - eta / 2) ** 2
    torch.testing.assert_close(inpo_loss(pw, pl, rw, rl, tw, tl, eta=eta, tau=1 / eta)[0], ipo_like.mean())
    iterative = ((pw - pl) - (tw - tl) - eta / 2) ** 2
    torch.testing.assert_close(inpo_loss(pw, pl, rw, rl, tw, tl, eta=eta, tau=0.0)[0], iterative.mean())
    a, b, c, d = _logps([0.0], [0.0], [0.0], [0.0])
    inpo_loss(a, b, c, d, eta=eta, tau=0.1)[0].backward()
    assert a.grad[0] < 0 < b.grad[0]
    with pytest.raises(ValueError, match="tau·eta"):
        inpo_loss(pw, pl, rw, rl, eta=10.0, tau=0.5)


def test_inpo_population_minimiser_is_the_mirror_descent_step():
    """Minimising INPO's loss in expectation over pairs y, y' ~ π_t labelled by P gives exactly
    π_{t+1} ∝ π_t^{1−τη} π_ref^{τη} exp(η P(y ≻ π_t)) — no win rate needed (INPO's key claim)."""
    P = ng.cyclic_preference_matrix(3, 0.9) * 0.5 + random_game(3, 7) * 0.5
    pi_t, ref, eta, tau = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5]), 2.0, 0.2
    pairs = [(i, j) for i, j in itertools.product(range(3), repeat=2) if i != j]
    # ordered pair (y_w, y_l) = (i, j) occurs with probability π_t(i) π_t(j) P(i ≻ j)
    weight = torch.tensor([pi_t[i] * pi_t[j] * P[i, j] for i, j in pairs], dtype=torch.float64)
    w_idx, l_idx = torch.tensor([i for i, _ in pairs]), torch.tensor([j for _, j in pairs])
    log_ref, log_t = torch.tensor(np.log(ref)), torch.tensor(np.log(pi_t))
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        logp = torch.log_softmax(theta, 0)
        per_pair = (logp[w_idx] - logp[l_idx] - tau * eta * (log_ref[w_idx] - log_ref[l_idx])
                    - (1 - tau * eta) * (log_t[w_idx] - log_t[l_idx]) - eta / 2) ** 2
        loss = (weight * per_pair).sum()
        loss.backward()
        return loss

    opt.step(closure)
    np.testing.assert_allclose(torch.softmax(theta, 0).detach().numpy(), ng.inpo_step(P, pi_t, ref, eta, tau),
                               atol=1e-6)
    # the pair-loss form agrees with the library function on the same tensors
    lp = torch.log_softmax(theta.detach(), 0)
    ours, _ = inpo_loss(lp[w_idx], lp[l_idx], log_ref[w_idx], log_ref[l_idx], log_t[w_idx], log_t[l_idx],
                        eta=eta, tau=tau)
    assert ours.item() >= 0


def test_geometric_mixture_limits_and_normalisation():
    """c = 0 is the policy's log-softmax (self-play), c = 1 the reference's; in between the
    normalised product π^{1−c} π_ref^{c} (METHODS A14)."""
    torch.manual_seed(3)
    zp, zr = torch.randn(2, 4, 11), torch.randn(2, 4, 11)
    torch.testing.assert_close(geometric_mixture_logits(zp, zr, 0.0), torch.log_softmax(zp, -1))
    torch.testing.assert_close(geometric_mixture_logits(zp, zr, 1.0), torch.log_softmax(zr, -1))
    c = 0.3
    prod = torch.softmax(zp, -1) ** (1 - c) * torch.softmax(zr, -1) ** c
    torch.testing.assert_close(geometric_mixture_logits(zp, zr, c).exp(), prod / prod.sum(-1, keepdim=True))
    with pytest.raises(ValueError, match="mixture_coef"):
        geometric_mixture_logits(zp, zr, 1.5)


def test_nash_md_loss_matches_formula_and_gradient_signs():
    torch.manual_seed(4)
    lp = (-torch.rand(3, 5, dtype=torch.float64)).requires_grad_()
    ref = -torch.rand(3, 5, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float64)
    p = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    loss, m = nash_md_policy_gradient_loss(lp, ref, mask, p, beta=0.0)
    torch.testing.assert_close(loss, (-(p - 0.5) * (lp * mask).sum(-1)).mean())
    loss.backward()
    assert (lp.grad[0][:3] < 0).all() and (lp.grad[1] == 0).all() and (lp.grad[2][:1] > 0).all()
    assert (lp.grad[0][3:] == 0).all()  # padding gets no gradient
    kl_only, m = nash_md_policy_gradient_loss(lp, ref, mask, torch.full((3,), 0.5, dtype=torch.float64), beta=0.1)
    expected = 0.1 * (((lp - ref) * mask).detach() * lp * mask).sum(-1).mean()
    torch.testing.assert_close(kl_only, expected)
    assert m["loss/kl"] == pytest.approx(((lp - ref) * mask).sum(-1).mean().item())
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        nash_md_policy_gradient_loss(lp, ref, mask, torch.tensor([0.2, 1.3, 0.5]))


def test_estimated_win_rates_include_self():
    probs = torch.tensor([[[0.5, 1.0, 0.8], [0.0, 0.5, 0.4], [0.2, 0.6, 0.5]]])
    torch.testing.assert_close(estimated_win_rates(probs), torch.tensor([[2.3 / 3, 0.9 / 3, 1.3 / 3]]))


# ------------------------------------------------------------------ the pocket model on this world
@pytest.fixture(scope="module")
def pocket_intransitive():
    """(model, tokenizer) of the intransitive world's SFT pocket model (≈ 1 min to build on 2 cores, then cached)."""
    from alignlib.pocket import load_pocket

    return load_pocket("intransitive")


def test_pocket_sft_policy_is_fluent_skewed_and_exploitable(world, pocket_intransitive):
    """The SFT pocket model writes the world's language (≥ 90% grammatical, styles recognised),
    inherits the corpus skew (mostly plain) and is therefore exploitable (> 0.1): the starting
    point the chapter's Nash methods must improve on."""
    from alignlib.rollout import sample

    model, tokenizer = pocket_intransitive
    prompts = world.prompts("eval") * 6
    texts = sample(model, tokenizer, prompts, max_new_tokens=32, seed=0).texts
    assert np.mean([world.is_grammatical(p, t) for p, t in zip(prompts, texts)]) >= 0.9
    dist = world.style_distribution(texts)
    assert dist[-1] <= 0.05 and dist[0] > 0.5 and min(dist[:3]) > 0.02
    assert world.exploitability(prompts, texts) > 0.1


def test_group_win_rates_from_the_world_judge(world):
    """k samples per prompt → [B, k] win rates against the group; with one sample per style
    the cyclic game gives every style the same rate, and the estimator matches the tensor one."""
    prompts = [X, "describe the river :"]
    completions = [world.best_response(x, s) for x in prompts for s in range(3)]
    rates = ng.group_win_rates(world.preference_probability, prompts, completions, k=3)
    assert rates.shape == (2, 3)
    np.testing.assert_allclose(rates, 0.5, atol=1e-12)
    uneven = ng.group_win_rates(world.preference_probability, [X], [completions[0]] * 2 + [completions[2]], k=3)
    assert uneven[0, 2] > 0.5 > uneven[0, 0]  # playful beats the two plain samples
    probs = torch.tensor([[world.preference_probability([X], [a], [b])[0] for b in completions[:3]]
                          for a in completions[:3]])
    torch.testing.assert_close(estimated_win_rates(probs[None]).double(), torch.tensor(rates[:1]))
    with pytest.raises(ValueError, match="k ≥ 2"):
        ng.group_win_rates(world.preference_probability, prompts, completions, k=2)
