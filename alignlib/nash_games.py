"""Tabular preference games: exact Nash equilibria, exploitability and learning dynamics.

A finite preference game has n responses and a preference matrix P with
P[i, j] = P(i ≻ j), P + Pᵀ = 1 (so P[i, i] = ½). A policy is a probability vector π.
Notation of the book's chapter 5:

    P(y ≻ π)        = Σ_j P[y, j] π_j = (P π)_y                        (eq-ch5-win-rate)
    exploitability  = max_y P(y ≻ π) − ½  ≥ 0                           (eq-ch5-exploitability)

The game is symmetric and zero-sum in A = P − ½ (A = −Aᵀ), so its value is 0: π is a
(symmetric) Nash equilibrium exactly when its exploitability is 0. A maximum over mixed
challengers is attained at a pure one (P(π' ≻ π) is linear in π'), hence the max over y.

The dynamics below are pure functions over probability vectors that return the whole
trajectory, [steps + 1, n], for the chapter's warm-up: plain self-play (gradient ascent,
fictitious play, multiplicative weights = tabular SPPO) cycles or converges only on
average, while the KL-regularised mirror descents (Nash-MD, INPO) converge in the last
iterate. scipy is not a dependency of this project, so the exact equilibrium is found by
support enumeration (exact for the small games of the book, n ≤ 12), and the
regularised equilibrium by Newton's method on its fixed-point equation.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

_ATOL = 1e-9


# ------------------------------------------------------------------ validation and construction
def check_probabilities(values, what: str = "preference probability") -> np.ndarray:
    """Return `values` as a float array after checking they are finite and lie in [0, 1]."""
    arr = np.asarray(values, dtype=float)
    bad = ~np.isfinite(arr) | (arr < 0.0) | (arr > 1.0)
    if bad.any():
        idx = np.argwhere(bad)[0]
        where = tuple(int(i) for i in idx) if arr.ndim else ()
        raise ValueError(f"{what} must be a finite number in [0, 1]; got {arr[tuple(idx)]!r} at index {where}. "
                         "A preference oracle returns probabilities P(a ≻ b), not scores or logits; "
                         "pass scores through a sigmoid first.")
    return arr


def validate_preference_matrix(P, atol: float = 1e-8) -> np.ndarray:
    """Return P as a float array after checking it is square, in [0, 1], and P + Pᵀ = 1."""
    P = check_probabilities(P, "preference matrix entry")
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise ValueError(f"a preference matrix must be square [n, n], got shape {P.shape}")
    gap = np.abs(P + P.T - 1.0).max()
    if gap > atol:
        raise ValueError(f"a preference matrix needs P[i, j] + P[j, i] = 1 (so P[i, i] = 0.5); off by {gap:.3g}")
    return P


def preference_matrix(oracle: Callable[[object, object], float], items: Sequence) -> np.ndarray:
    """Return the matrix P[i, j] = oracle(items[i], items[j]), validated (clear error outside [0, 1])."""
    P = np.array([[oracle(a, b) for b in items] for a in items], dtype=float)
    return validate_preference_matrix(P, atol=1e-6)


def group_win_rates(preference_probability: Callable, prompts: Sequence[str], completions: Sequence[str],
                    k: int) -> np.ndarray:
    """Return P̂(y_i ≻ π) = (1/k) Σ_j P(y_i ≻ y_j | x), shape [B, k], for k samples per prompt.

    `completions` is prompt-major ([B·k], the k samples of prompt b at b·k … b·k + k − 1,
    the layout of the online group source); `preference_probability(prompts, a, b)` is a
    judge returning probabilities, e.g. a world's gold oracle. Each sample is compared with
    all k including itself (which contributes ½), as in SPPO's estimator; values outside
    [0, 1] raise. This is the input of SPPO's and DNO's losses.
    """
    if k < 2 or len(completions) != len(prompts) * k:
        raise ValueError(f"need k ≥ 2 samples per prompt and len(completions) = len(prompts)·k; "
                         f"got k={k}, {len(prompts)} prompts, {len(completions)} completions")
    idx = [(b, i, j) for b in range(len(prompts)) for i in range(k) for j in range(k)]
    probs = preference_probability([prompts[b] for b, _, _ in idx], [completions[b * k + i] for b, i, _ in idx],
                                   [completions[b * k + j] for b, _, j in idx])
    return check_probabilities(probs, "judge probability").reshape(len(prompts), k, k).mean(axis=-1)


def cyclic_preference_matrix(n: int = 3, win: float = 1.0) -> np.ndarray:
    """Return the generalised rock–paper–scissors matrix: i beats the next (n−1)/2 items, cyclically.

    P[i, j] = win if (j − i) mod n ∈ {1, …, (n−1)/2}, 1 − win for the other j ≠ i, ½ on the
    diagonal. n must be odd so that every item beats exactly half of the others; the
    unique Nash equilibrium is then uniform.
    """
    if n < 3 or n % 2 == 0:
        raise ValueError(f"a cyclic game needs an odd number of items ≥ 3, got {n}")
    if not 0.5 <= win <= 1.0:
        raise ValueError(f"win probability must be in [0.5, 1], got {win}")
    P = np.full((n, n), 0.5)
    for i in range(n):
        for k in range(1, (n - 1) // 2 + 1):
            P[i, (i + k) % n], P[(i + k) % n, i] = win, 1.0 - win
    return P


def _check_policy(pi, n: int, what: str = "policy") -> np.ndarray:
    pi = np.asarray(pi, dtype=float)
    if pi.shape != (n,) or (pi < -_ATOL).any() or abs(pi.sum() - 1.0) > 1e-6:
        raise ValueError(f"{what} must be a probability vector of length {n}, got {pi}")
    return np.clip(pi, 0.0, None) / np.clip(pi, 0.0, None).sum()


# ------------------------------------------------------------------ game quantities
def win_rates(P, pi) -> np.ndarray:
    """Return P(y ≻ π) for every response y: the vector P π, (eq-ch5-win-rate)."""
    P = validate_preference_matrix(P)
    return P @ _check_policy(pi, len(P))


def exploitability(P, pi) -> float:
    """Return max_y P(y ≻ π) − ½, (eq-ch5-exploitability): 0 exactly at a Nash equilibrium."""
    return float(win_rates(P, pi).max() - 0.5)


def bt_fit(P, eps: float = 1e-6) -> tuple[np.ndarray, float]:
    """Return (r, relative residual) of the best Bradley–Terry fit logit P[i, j] ≈ r_i − r_j.

    On a complete comparison graph the least-squares r is the row mean of the logit
    matrix L (Hodge decomposition: L = gradient part + cyclic part). The residual
    ‖L − (r_i − r_j)‖ / ‖L‖ is 0 for a BT matrix and 1 for a purely cyclic one, so it
    measures how far P is from any scalar reward. Probabilities are clipped to
    [eps, 1 − eps] so deterministic preferences have finite logits.
    """
    P = np.clip(validate_preference_matrix(P), eps, 1 - eps)
    L = np.log(P) - np.log1p(-P)
    r = L.mean(axis=1)
    norm = np.linalg.norm(L)
    residual = np.linalg.norm(L - (r[:, None] - r[None, :]))
    return r - r.mean(), float(residual / norm) if norm > 0 else 0.0


def find_cycle(P) -> tuple[int, int, int] | None:
    """Return (i, j, k) with P[i,j], P[j,k], P[k,i] all > ½ (an intransitive triple), or None."""
    P = validate_preference_matrix(P)
    n = len(P)
    for i, j, k in itertools.permutations(range(n), 3):
        if P[i, j] > 0.5 and P[j, k] > 0.5 and P[k, i] > 0.5:
            return i, j, k
    return None


# ------------------------------------------------------------------ exact equilibria
def nash_equilibrium(P, tol: float = 1e-9, max_n: int = 12) -> np.ndarray:
    """Return a symmetric Nash equilibrium π of the preference game P (exploitability ≤ tol).

    Support enumeration, smallest supports first: on a support S the equilibrium makes
    every response in S tie against π, A_SS π_S = 0 with Σ π_S = 1 (A = P − ½); it is
    accepted when π_S ≥ 0 and no response outside S wins, (A π)_y ≤ 0. Exact up to
    floating point; the result carries the certificate exploitability(P, π) ≤ tol.
    Cost 2ⁿ small solves, hence `max_n`.
    """
    P = validate_preference_matrix(P)
    n = len(P)
    if n > max_n:
        raise ValueError(f"support enumeration is exponential; n = {n} > max_n = {max_n}. "
                         "Use regularized_nash_equilibrium with a small tau for larger games.")
    A = P - 0.5
    for size in range(1, n + 1):
        for support in itertools.combinations(range(n), size):
            S = list(support)
            system = np.vstack([A[np.ix_(S, S)], np.ones((1, size))])
            rhs = np.zeros(size + 1)
            rhs[-1] = 1.0
            x, *_ = np.linalg.lstsq(system, rhs, rcond=None)
            if np.abs(system @ x - rhs).max() > 1e-9 or (x < -1e-12).any():
                continue
            pi = np.zeros(n)
            pi[S] = np.clip(x, 0.0, None)
            pi /= pi.sum()
            if (A @ pi).max() <= tol:
                return pi
    raise RuntimeError("no equilibrium found; this cannot happen for a valid preference matrix")


def regularized_nash_equilibrium(P, ref, tau: float, tol: float = 1e-10, max_steps: int = 500) -> np.ndarray:
    """Return π*_τ, the Nash equilibrium of the KL-regularised game (Munos et al. 2024, NLHF;
    section numbers not checked here).

    π*_τ = argmax_π min_π' P(π ≻ π') − τ KL(π‖μ) + τ KL(π'‖μ) is the unique solution of the
    fixed point π = softmax(log μ + P π / τ)                                (eq-ch5-regularised-ne)
    (each player's best response to the other is this softmax). Solved by damped Newton on
    the logits z, H(z) = z − log μ − P softmax(z)/τ = 0, whose Jacobian I − A D/τ (A = P − ½
    skew, D = diag(π) − ππᵀ ⪰ 0) has eigenvalues 1 − iλ and so is always invertible. The
    result carries the certificate ‖π − softmax(log μ + Pπ/τ)‖₁ ≤ tol.
    """
    P = validate_preference_matrix(P)
    mu = _check_policy(ref, len(P), "reference")
    if tau <= 0 or (mu <= 0).any():
        raise ValueError("the regularised equilibrium needs tau > 0 and a reference with full support")
    log_mu, eye = np.log(mu), np.eye(len(P))

    def residual(z: np.ndarray) -> np.ndarray:
        return z - log_mu - P @ _softmax(z) / tau

    z = log_mu.copy()
    for _ in range(max_steps):
        pi = _softmax(z)
        if np.abs(pi - _softmax(log_mu + P @ pi / tau)).sum() <= tol:
            return pi
        h = residual(z)
        jac = eye - P @ (np.diag(pi) - np.outer(pi, pi)) / tau
        dz = np.linalg.solve(jac, -h)
        step, norm = 1.0, np.linalg.norm(h)
        while np.linalg.norm(residual(z + step * dz)) > (1 - 1e-4 * step) * norm and step > 1e-10:
            step /= 2  # backtracking keeps Newton globally convergent
        z = z + step * dz
    raise RuntimeError(f"regularised equilibrium not reached to tol={tol} in {max_steps} Newton steps")


# ------------------------------------------------------------------ one-step updates
def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


def project_simplex(v) -> np.ndarray:
    """Return the Euclidean projection of v onto the probability simplex (sort-based, exact)."""
    v = np.asarray(v, dtype=float)
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.arange(1, len(v) + 1)
    rho = np.nonzero(u - css / k > 0)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1), 0.0)


def geometric_mixture(pi, ref, coef: float) -> np.ndarray:
    """Return the normalised geometric mixture π^{1−c} μ^{c} (c = `coef` ∈ [0, 1])."""
    if not 0.0 <= coef <= 1.0:
        raise ValueError(f"mixture coefficient must be in [0, 1], got {coef}")
    return _softmax((1 - coef) * np.log(np.maximum(pi, 1e-300)) + coef * np.log(np.maximum(ref, 1e-300)))


def mwu_step(P, pi, eta: float) -> np.ndarray:
    """Return π' ∝ π exp(η P(y ≻ π)): multiplicative weights, SPPO's update (Wu et al. 2024)."""
    return _softmax(np.log(np.maximum(pi, 1e-300)) + eta * (P @ pi))


def nash_md_step(P, pi, ref, eta: float, tau: float) -> np.ndarray:
    """Return Nash-MD's update (Munos et al. 2024), with ητ the weight of μ (= π_ref) in the geometric mixture:

        π_t^μ ∝ π_t^{1−ητ} μ^{ητ};   π_{t+1} ∝ π_t^μ exp(η P(y ≻ π_t^μ))   (eq-ch5-nash-md-update)

    The opponent is the regularised mixture π_t^μ, not π_t itself.
    """
    mix = geometric_mixture(pi, ref, eta * tau)
    return _softmax(np.log(np.maximum(mix, 1e-300)) + eta * (P @ mix))


def inpo_step(P, pi, ref, eta: float, tau: float) -> np.ndarray:
    """Return INPO's online-mirror-descent update (Zhang et al. 2025; form not verified against the paper):

        π_{t+1} ∝ π_t^{1−ητ} μ^{ητ} exp(η P(y ≻ π_t))

    (chapter 5 states it in words in its tabular warm-up; the book has no numbered equation for it).

    Same prox term as Nash-MD, but the opponent is the current policy π_t.
    """
    mix = geometric_mixture(pi, ref, eta * tau)
    return _softmax(np.log(np.maximum(mix, 1e-300)) + eta * (P @ pi))


# ------------------------------------------------------------------ trajectories
def _run(step: Callable[[np.ndarray], np.ndarray], pi0: np.ndarray, steps: int) -> np.ndarray:
    traj = [pi0]
    for _ in range(steps):
        traj.append(step(traj[-1]))
    return np.stack(traj)


def gradient_self_play(P, pi0, lr: float = 0.1, steps: int = 1000) -> np.ndarray:
    """Return the trajectory of projected gradient ascent on P(π ≻ π_t): π' = Proj(π + lr · P π)."""
    P = validate_preference_matrix(P)
    return _run(lambda pi: project_simplex(pi + lr * (P @ pi)), _check_policy(pi0, len(P)), steps)


def fictitious_play(P, pi0, steps: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Return (last iterates, running averages) of fictitious play, each [steps + 1, n].

    Each round plays a pure best response to the average of all past plays (first
    maximiser on ties). In a zero-sum game the average converges to equilibrium
    (Robinson 1951); the played iterate is pure and keeps cycling.
    """
    P = validate_preference_matrix(P)
    avg = _check_policy(pi0, len(P))
    plays, avgs = [avg], [avg]
    for t in range(1, steps + 1):
        play = np.eye(len(P))[np.argmax(P @ avg)]
        avg = avg + (play - avg) / (t + 1)
        plays.append(play)
        avgs.append(avg)
    return np.stack(plays), np.stack(avgs)


def multiplicative_weights(P, pi0, eta: float = 0.5, steps: int = 1000) -> np.ndarray:
    """Return the trajectory of SPPO's tabular update π_{t+1} ∝ π_t exp(η P(y ≻ π_t)).

    Without regularisation its average converges but its last iterate spirals away from
    an interior equilibrium (on rock–paper–scissors KL(π*‖π_t) grows).
    """
    P = validate_preference_matrix(P)
    return _run(lambda pi: mwu_step(P, pi, eta), _check_policy(pi0, len(P)), steps)


def nash_md(P, pi0, ref, eta: float = 0.5, tau: float = 0.1, steps: int = 1000) -> np.ndarray:
    """Return the trajectory of Nash-MD, (eq-ch5-nash-md-update); last iterate → near π*_τ.

    Munos et al. prove last-iterate convergence (linear in t) to a neighbourhood of the
    regularised equilibrium π*_τ whose size shrinks with η/τ.
    """
    P = validate_preference_matrix(P)
    mu = _check_policy(ref, len(P), "reference")
    if not 0 < eta * tau <= 1:
        raise ValueError(f"need 0 < eta·tau ≤ 1 (the mixture weight), got {eta * tau}")
    return _run(lambda pi: nash_md_step(P, pi, mu, eta, tau), _check_policy(pi0, len(P)), steps)


def inpo(P, pi0, ref, eta: float = 0.5, tau: float = 0.1, steps: int = 1000) -> np.ndarray:
    """Return the trajectory of INPO's mirror descent (`inpo_step`, chapter 5's tabular warm-up).

    Its fixed point is exactly π*_τ.
    """
    P = validate_preference_matrix(P)
    mu = _check_policy(ref, len(P), "reference")
    if not 0 < eta * tau <= 1:
        raise ValueError(f"need 0 < eta·tau ≤ 1 (the mixture weight), got {eta * tau}")
    return _run(lambda pi: inpo_step(P, pi, mu, eta, tau), _check_policy(pi0, len(P)), steps)


def exploitability_curve(P, trajectory) -> np.ndarray:
    """Return the exploitability of every row of a trajectory [T, n] → [T]."""
    P = validate_preference_matrix(P)
    traj = np.asarray(trajectory, dtype=float)
    return (traj @ P.T).max(axis=1) - 0.5
