"""Regret versus partial return: two models of how a person compares trajectory segments.

Knox et al., "Models of human preference for learning reward functions" (TMLR 2024); book chapter 2.
A segment σ = (s_0, a_0, s_1, …, s_L) is a piece of a trajectory in a deterministic MDP. The two models:

    P(σ1 ≻ σ2) = σ( Σ_t r(s¹_t, a¹_t) − Σ_t r(s²_t, a²_t) )                      (eq-partial-return)
    P(σ1 ≻ σ2) = σ( Σ_t A*_r(s¹_t, a¹_t) − Σ_t A*_r(s²_t, a²_t) )                (eq-regret-model)

with A*_r = Q*_r − V*_r the optimal advantage of the reward r. With deterministic transitions
regret(σ) = V*(s_0) − (Σ_t r_t + V*(s_L)) = −Σ_t A*(s_t, a_t), so (eq-regret-model) is
σ(regret(σ2) − regret(σ1)): a segment made only of optimal actions has zero regret.

The world is a small gridworld (`Gridworld`): four moves (bumping a wall stays put), an absorbing goal,
−1 per step (the project page's example task) and optional "mud" cells that cost extra to enter.
Rewards are tables r[S, A]; undiscounted (γ = 1) values come from value iteration. Segments are arrays
states [N, L+1], actions [N, L], valid [N, L]; steps after the goal is reached are padding (valid False).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))  # up, right, down, left
ARROWS = "↑→↓←"


@dataclass(frozen=True)
class Gridworld:
    """A deterministic grid: `next_state[S, A]`, `terminal[S]` (the goal) and the true reward `reward[S, A]`."""

    height: int
    width: int
    next_state: np.ndarray  # [S, A] int
    terminal: np.ndarray  # [S] bool
    reward: np.ndarray  # [S, A] float, 0 on the terminal row

    @property
    def n_states(self) -> int:
        return self.height * self.width


def make_gridworld(height: int = 5, width: int = 5, goal: tuple[int, int] = (0, 4), step_reward: float = -1.0,
                   mud: tuple[tuple[int, int], ...] = (), mud_reward: float = -3.0) -> Gridworld:
    """Return a gridworld; entering a mud cell costs `step_reward + mud_reward` instead of `step_reward`."""
    if not (0 <= goal[0] < height and 0 <= goal[1] < width):
        raise ValueError(f"goal {goal} lies outside the {height}x{width} grid")
    S = height * width
    nxt = np.zeros((S, 4), dtype=np.int64)
    for s in range(S):
        r, c = divmod(s, width)
        for a, (dr, dc) in enumerate(MOVES):
            rr, cc = r + dr, c + dc
            nxt[s, a] = rr * width + cc if (0 <= rr < height and 0 <= cc < width) else s
    terminal = np.zeros(S, dtype=bool)
    terminal[goal[0] * width + goal[1]] = True
    mud_mask = np.zeros(S)
    for r, c in mud:
        mud_mask[r * width + c] = 1.0
    reward = step_reward + mud_reward * mud_mask[nxt]
    reward[terminal] = 0.0
    return Gridworld(height, width, nxt, terminal, reward)


def optimal_values(world: Gridworld, reward: np.ndarray, horizon: int | None = None, max_iters: int = 10_000):
    """Return (V*[S], Q*[S, A], A*[S, A]) of a reward table [S, A] by undiscounted value iteration.

    The goal's row of `reward` is ignored and V* = 0 there (the episode has ended).

    horizon=None iterates to convergence (the reward must make every cycle cost something); an integer runs
    exactly that many Bellman backups, i.e. the optimal values with `horizon` steps to go.
    """
    reward = np.where(world.terminal[:, None], 0.0, np.asarray(reward, dtype=float))
    V = np.zeros(world.n_states)
    for _ in range(horizon if horizon is not None else max_iters):
        Q = reward + np.where(world.terminal[:, None], 0.0, V[world.next_state])
        V_new = Q.max(axis=1)
        if horizon is None and np.abs(V_new - V).max() < 1e-10:
            break
        V = V_new
    else:
        if horizon is None:
            raise ValueError("value iteration did not converge: the reward has a cycle that does not cost; pass horizon=")
    Q = reward + np.where(world.terminal[:, None], 0.0, V[world.next_state])
    return V, Q, Q - V[:, None]


def differentiable_advantage(world: Gridworld, reward: torch.Tensor, n_backups: int, temperature: float = 0.0):
    """Return A*[S, A] = Q* − V* of a torch reward table [S, A], differentiable in the reward.

    V starts at 0 and gets exactly `n_backups` undiscounted Bellman backups; Q is then formed from that V.
    temperature=0 (default) uses the hard max, whose gradient flows through the arg-max action;
    temperature τ > 0 uses the soft backup V = τ·logsumexp(Q/τ) instead.
    """
    nxt = torch.as_tensor(world.next_state)
    live = torch.as_tensor(~world.terminal, dtype=reward.dtype)[:, None]  # [S, 1]: the goal ends the episode
    reward = reward * live

    def backup(V):
        Q = reward + live * V[nxt]
        return Q, (Q.max(dim=1).values if temperature == 0 else temperature * torch.logsumexp(Q / temperature, 1))

    V = torch.zeros(world.n_states, dtype=reward.dtype)
    for _ in range(n_backups):
        V = backup(V)[1]
    Q, V_next = backup(V)
    return Q - V_next[:, None]  # A* = Q* − max_a Q* (≤ 0 for the hard max)


def segment_from_actions(world: Gridworld, start: tuple[int, int], actions) -> tuple:
    """Return one segment (states [1, L+1], actions [1, L], valid [1, L]) that starts at cell `start`."""
    states = [start[0] * world.width + start[1]]
    for a in actions:
        states.append(states[-1] if world.terminal[states[-1]] else int(world.next_state[states[-1], a]))
    valid = ~world.terminal[np.array(states[:-1])]
    return np.array([states]), np.array([list(actions)]), valid[None]


def cell_rewards(world: Gridworld, reward: np.ndarray) -> np.ndarray:
    """Return the reward for entering each cell, [height, width], of a reward r(s, a) = θ[next_state(s, a)]."""
    theta = np.zeros(world.n_states)
    live = ~world.terminal
    theta[world.next_state[live].ravel()] = reward[live].ravel()
    return theta.reshape(world.height, world.width)


def sample_segments(world: Gridworld, n: int, length: int, rng: np.random.Generator):
    """Return (states [n, L+1], actions [n, L], valid [n, L]) of uniformly random moves from random non-goal starts."""
    starts = np.flatnonzero(~world.terminal)
    states = np.zeros((n, length + 1), dtype=np.int64)
    states[:, 0] = rng.choice(starts, size=n)
    actions = rng.integers(0, 4, size=(n, length))
    valid = np.zeros((n, length), dtype=bool)
    for t in range(length):
        valid[:, t] = ~world.terminal[states[:, t]]
        states[:, t + 1] = np.where(valid[:, t], world.next_state[states[:, t], actions[:, t]], states[:, t])
    actions = np.where(valid, actions, 0)
    return states, actions, valid


def segment_sum(table, states, actions, valid):
    """Return Σ_t valid·table[s_t, a_t] per segment, shape [N]; `table` is a numpy array or a torch tensor [S, A]."""
    if isinstance(table, torch.Tensor):
        states, actions, valid = (torch.as_tensor(x) for x in (states, actions, valid))
        return (table[states[:, :-1], actions] * valid.to(table.dtype)).sum(-1)
    return (np.asarray(table)[states[:, :-1], actions] * valid).sum(-1)


def partial_return_logit(reward, seg1, seg2):
    """Return the logit of P(σ1 ≻ σ2) under (eq-partial-return), shape [N]; seg = (states, actions, valid)."""
    return segment_sum(reward, *seg1) - segment_sum(reward, *seg2)


def regret_logit(advantage, seg1, seg2):
    """Return the logit of P(σ1 ≻ σ2) under (eq-regret-model): Σ A*(σ1) − Σ A*(σ2), shape [N]."""
    return segment_sum(advantage, *seg1) - segment_sum(advantage, *seg2)


def fit_reward(world: Gridworld, seg1, seg2, labels, model: str, steps: int = 400, lr: float = 0.05,
               n_backups: int | None = None, temperature: float = 0.0) -> np.ndarray:
    """Return a reward table [S, A] fitted by maximum likelihood to labels [N] (1 = σ1 preferred) under `model`.

    The candidate reward is tabular over cells: r(s, a) = θ[next_state(s, a)], the reward for entering a
    cell (θ has S entries; the true −1-per-step and mud rewards are of this form). model="partial_return"
    scores segments by (eq-partial-return); model="regret" by (eq-regret-model), with A* of the candidate
    from `n_backups` (default 2·(height + width)) differentiable Bellman backups (hard max when
    temperature=0). Adam from θ = 0 (so the fit is deterministic), full batch, `steps` steps.
    """
    if model not in ("partial_return", "regret"):
        raise ValueError(f"model must be 'partial_return' or 'regret', got {model!r}")
    n_backups = n_backups or 2 * (world.height + world.width)
    theta = torch.zeros(world.n_states, dtype=torch.float64, requires_grad=True)
    nxt = torch.as_tensor(world.next_state)
    y = torch.as_tensor(np.asarray(labels, dtype=float))
    opt = torch.optim.Adam([theta], lr=lr)
    for _ in range(steps):
        r = theta[nxt]  # [S, A]
        table = r if model == "partial_return" else differentiable_advantage(world, r, n_backups, temperature)
        logits = (partial_return_logit if model == "partial_return" else regret_logit)(table, seg1, seg2)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return theta.detach().numpy()[world.next_state] * (~world.terminal)[:, None]


def evaluate_reward(world: Gridworld, reward: np.ndarray, horizon: int | None = None) -> dict:
    """Return the greedy policy of `reward` and how it does under the true reward.

    Plans with `horizon` (default 4·(height + width)) backups on the learned reward, acts greedily from every
    non-goal state for `horizon` steps in the world, and reports mean true return, the optimal mean return,
    and the fraction of non-goal states whose greedy action is optimal under the true reward.
    """
    horizon = horizon or 4 * (world.height + world.width)
    _, Q, _ = optimal_values(world, reward, horizon=horizon)
    policy = Q.argmax(axis=1)
    V_true, _, A_true = optimal_values(world, world.reward)
    starts = np.flatnonzero(~world.terminal)
    s, ret = starts.copy(), np.zeros(len(starts))
    for _ in range(horizon):
        live = ~world.terminal[s]
        ret += live * world.reward[s, policy[s]]
        s = np.where(live, world.next_state[s, policy[s]], s)
    return {"policy": policy, "mean_return": float(ret.mean()), "optimal_return": float(V_true[starts].mean()),
            "frac_optimal": float((A_true[starts, policy[starts]] > -1e-9).mean()),
            "reaches_goal": float(world.terminal[s].mean())}


def learning_demo(world: Gridworld | None = None, n_pairs: int = 400, length: int = 3, seed: int = 0,
                  steps: int = 400) -> dict:
    """Return {"regret": …, "partial_return": …}: evaluate_reward(...) plus "reward" [S, A] for each model.

    Both fits see the same `n_pairs` pairs of random `length`-step segments, labelled by Bernoulli draws from
    (eq-regret-model) under the world's true reward (default world: 6x6, goal in the top-right corner, −1 per
    step). Why the partial-return fit fails: the labels favour segments that make progress towards the goal,
    and a reward on cells can only explain that through which cells the segments enter. Its constant offset
    is nearly free: two equal-length segments that miss the goal differ by nothing under a constant reward
    (eq-partial-return carries no signal there), so only the few segments that reach the goal constrain it,
    and the fitted cell rewards hover around 0 instead of −1. Whenever one comes out positive, the greedy
    policy of the learned reward stays there (bumping a wall pays each step) and never ends the episode.
    Under (eq-regret-model) the offset matters, because the goal ends the episode and V* counts the steps
    to it, so the regret fit pins down a reward with the right optimal policy.
    """
    world = world or make_gridworld(6, 6, goal=(0, 5))
    rng = np.random.default_rng(seed)
    seg1 = sample_segments(world, n_pairs, length, rng)
    seg2 = sample_segments(world, n_pairs, length, rng)
    _, _, A_true = optimal_values(world, world.reward)
    p = 1.0 / (1.0 + np.exp(-regret_logit(A_true, seg1, seg2)))
    labels = (rng.random(n_pairs) < p).astype(float)
    out = {}
    for model in ("regret", "partial_return"):
        r_hat = fit_reward(world, seg1, seg2, labels, model, steps=steps)
        out[model] = {**evaluate_reward(world, r_hat), "reward": r_hat}
    return out
