"""Diverse preferences: a mixture of reward models by EM, MaxMin-RLHF, and directional preference alignment.

* **Reward models on style features.** A group's reward model is linear Bradley–Terry on an
  interpretable code of the response (`style_features`): a one-hot of its (formal, casual)
  sentence counts, plus its counts of broken, repeated and off-topic sentences. The code is
  rich enough to hold each group's gold taste exactly on the responses the pocket model
  writes, and its fit is a convex problem, so EM's M-step is exact and its monotone ascent
  can be checked to the last digit. The *policy* is the real pocket LM, trained by the one
  loop (`alignlib.train`) with these rewards.
* **EM over a mixture of BT models** (MaxMin-RLHF, Chakraborty et al. 2024; chapter 9):
  annotators have a hidden group u; soft EM alternates responsibilities (eq-em-estep) and
  weighted BT fits (eq-em-mstep). `hard=True` gives the paper's hard assignments.
* **MaxMin policy optimisation**: reward = the learned group reward of the worst-off group
  (eq-maxmin), each group reward standardised under π_ref's samples first.
* **DPA** (Wang et al. 2024; chapter 9): attribute vector r(x, y) ∈ R^k, user direction
  v with ‖v‖ = 1, reward vᵀr; preference-conditioned rejection-sampling fine-tuning, with v
  written in the prompt, steers the policy at inference.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]
MAX_COUNT = 4  # sentence counts above this share the last one-hot cell


# ------------------------------------------------------------------ features
def style_features(world, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """Return the features [B, D] of each response: one-hot of (formal, casual) counts, then fault counts.

    D = (MAX_COUNT + 1)² + 3. Counts above MAX_COUNT are clipped. Needs a world with
    `score(prompt, response)` giving "formal", "casual", "bad", "repeated", "off_topic"
    (the two-populations world).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    cells = (MAX_COUNT + 1) ** 2
    out = np.zeros((len(prompts), cells + 3))
    for i, (p, r) in enumerate(zip(prompts, responses)):
        s = world.score(p, r)
        nf, nc = min(int(s["formal"]), MAX_COUNT), min(int(s["casual"]), MAX_COUNT)
        out[i, nf * (MAX_COUNT + 1) + nc] = 1.0
        out[i, cells:] = (s["bad"], s["repeated"], s["off_topic"])
    return out


def pair_differences(world, rows: Sequence[dict]) -> np.ndarray:
    """Return Δ = φ(x, chosen) − φ(x, rejected), [N, D], for preference rows."""
    if not rows:
        raise ValueError("no preference rows: pass rows with prompt, chosen and rejected")
    prompts = [r["prompt"] for r in rows]
    return (style_features(world, prompts, [r["chosen"] for r in rows])
            - style_features(world, prompts, [r["rejected"] for r in rows]))


# --------------------------------------------------------- Bradley–Terry fit
def bt_loglik(theta: np.ndarray, diffs: np.ndarray) -> np.ndarray:
    """Return log σ(θᵀΔ_i) for every pair, [N]: the BT log-likelihood of the chosen response winning (eq. 1.1)."""
    return -np.logaddexp(0.0, -(diffs @ theta))


def fit_bt(diffs: np.ndarray, weights: np.ndarray | None = None, l2: float = 1.0, theta0: np.ndarray | None = None,
           max_iter: int = 50, tol: float = 1e-10) -> np.ndarray:
    """Return argmax_θ Σ_i w_i log σ(θᵀΔ_i) − (l2/2)‖θ‖²: a weighted, L2-penalised linear BT fit (eq-em-mstep).

    diffs [N, D], weights [N] (default 1). Newton's method on a strictly concave
    objective (l2 > 0), so the result is the exact maximiser to `tol`.
    """
    n, d = diffs.shape
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0 (it makes the fit unique), got {l2}")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (n,) or (w < 0).any():
        raise ValueError(f"weights must be {n} non-negative numbers, got shape {w.shape}")
    theta = np.zeros(d) if theta0 is None else theta0.copy()
    for _ in range(max_iter):
        z = diffs @ theta
        p = 1.0 / (1.0 + np.exp(-z))  # σ(z)
        grad = diffs.T @ (w * (1.0 - p)) - l2 * theta
        hess = (diffs * (w * p * (1.0 - p))[:, None]).T @ diffs + l2 * np.eye(d)
        step = np.linalg.solve(hess, grad)
        theta = theta + step
        if np.abs(step).max() < tol:
            break
    return theta


class FeatureRewardModel:
    """r(x, y) = θᵀφ(x, y) on `style_features`, optionally standardised: (r − m) / s."""

    def __init__(self, world, theta: np.ndarray, shift: float = 0.0, scale: float = 1.0):
        self.world, self.theta, self.shift, self.scale = world, np.asarray(theta, dtype=float), shift, scale

    def raw(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return style_features(self.world, prompts, responses) @ self.theta

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return ((self.raw(prompts, responses) - self.shift) / self.scale).tolist()

    def normalise_under(self, prompts: Sequence[str], responses: Sequence[str]) -> FeatureRewardModel:
        """Return a copy standardised to mean 0, std 1 on these (reference-policy) samples."""
        r = self.raw(prompts, responses)
        return FeatureRewardModel(self.world, self.theta, float(r.mean()), float(r.std()) + 1e-8)


def fit_reward_model(world, rows: Sequence[dict], l2: float = 1.0) -> FeatureRewardModel:
    """Return one BT reward model fitted to all rows: the single-RM baseline (MaxMin's U = 1)."""
    return FeatureRewardModel(world, fit_bt(pair_differences(world, rows), l2=l2))


# ------------------------------------------------------------------- EM
@dataclass
class MixtureFit:
    """Result of `em_mixture`."""

    thetas: np.ndarray            # [U, D] group reward models
    mixing: np.ndarray            # [U] group shares w_u
    responsibilities: np.ndarray  # [H, U] posterior P(u | annotator h's pairs)
    annotators: list              # the annotator ids, in the order of the rows of `responsibilities`
    objective: list[float] = field(default_factory=list)  # penalised log-likelihood after each iteration

    @property
    def assignment(self) -> dict:
        """Return annotator id → most probable group."""
        return {h: int(u) for h, u in zip(self.annotators, self.responsibilities.argmax(1))}

    def reward_models(self, world) -> list[FeatureRewardModel]:
        return [FeatureRewardModel(world, t) for t in self.thetas]


def annotator_logliks(thetas: np.ndarray, diffs: np.ndarray, owner: np.ndarray, n_annotators: int) -> np.ndarray:
    """Return L[h, u] = Σ_{i ∈ D_h} log σ(θ_uᵀΔ_i): each annotator's data log-likelihood under each group's model."""
    out = np.zeros((n_annotators, len(thetas)))
    for u, theta in enumerate(thetas):
        np.add.at(out[:, u], owner, bt_loglik(theta, diffs))
    return out


def responsibilities(thetas: np.ndarray, mixing: np.ndarray, diffs: np.ndarray, owner: np.ndarray,
                     n_annotators: int) -> np.ndarray:
    """Return γ[h, u] ∝ w_u Π_{i∈D_h} σ(θ_uᵀΔ_i), each row summing to 1 (eq-em-estep); no pairs gives γ = w."""
    ll = annotator_logliks(thetas, diffs, owner, n_annotators) + np.log(mixing)[None, :]
    resp = np.exp(ll - ll.max(1, keepdims=True))
    return resp / resp.sum(1, keepdims=True)


def mixture_objective(thetas: np.ndarray, mixing: np.ndarray, diffs: np.ndarray, owner: np.ndarray,
                      n_annotators: int, l2: float) -> float:
    """Return Σ_h log Σ_u w_u Π_{i∈D_h} σ(θ_uᵀΔ_i) − (l2/2) Σ_u ‖θ_u‖²: the penalised mixture likelihood (eq-em-objective)."""
    ll = annotator_logliks(thetas, diffs, owner, n_annotators) + np.log(mixing)[None, :]
    top = ll.max(1, keepdims=True)
    marginal = (top[:, 0] + np.log(np.exp(ll - top).sum(1))).sum()
    return float(marginal - 0.5 * l2 * (thetas ** 2).sum())


def em_mixture(world, rows: Sequence[dict], n_groups: int = 2, iterations: int = 30, seed: int = 0, l2: float = 1.0,
               hard: bool = False, restarts: int = 3, tol: float = 1e-6) -> MixtureFit:
    """Fit a mixture of `n_groups` BT reward models to pooled rows with an `annotator` column, by EM.

    E-step (eq-em-estep): γ_hu ∝ w_u Π_{i∈D_h} σ(θ_uᵀΔ_i) (hard: one-hot at the argmax).
    M-step (eq-em-mstep): w_u = mean_h γ_hu; θ_u = `fit_bt` with pair weights γ_{h(i)u}.
    Soft EM with an exact M-step never lowers `mixture_objective`; the best of `restarts`
    random initialisations (by the objective) is returned. The `group` column is never read.
    """
    if n_groups < 1:
        raise ValueError(f"n_groups must be ≥ 1, got {n_groups}")
    if not rows or any("annotator" not in r for r in rows):
        raise ValueError("em_mixture needs preference rows with an 'annotator' column (who labelled each pair); "
                         "see TwoPopulationsWorld.annotated_pairs")
    annotators = sorted({r["annotator"] for r in rows}, key=str)
    if len(annotators) < n_groups:
        raise ValueError(f"{len(annotators)} annotator(s) cannot be split into {n_groups} groups")
    index = {h: i for i, h in enumerate(annotators)}
    owner = np.array([index[r["annotator"]] for r in rows])
    diffs = pair_differences(world, rows)
    n = len(annotators)
    best: MixtureFit | None = None
    for restart in range(restarts):
        rng = np.random.default_rng(seed * 1000 + restart)
        resp = rng.dirichlet(np.ones(n_groups), size=n)  # random soft start
        thetas = np.zeros((n_groups, diffs.shape[1]))
        history: list[float] = []
        for _ in range(iterations):
            # M-step
            mixing = np.clip(resp.mean(0), 1e-8, None)
            mixing = mixing / mixing.sum()
            thetas = np.stack([fit_bt(diffs, resp[owner, u], l2=l2, theta0=thetas[u]) for u in range(n_groups)])
            history.append(mixture_objective(thetas, mixing, diffs, owner, n, l2))
            # E-step
            resp = responsibilities(thetas, mixing, diffs, owner, n)
            if hard:
                resp = np.eye(n_groups)[resp.argmax(1)]
            if len(history) > 1 and abs(history[-1] - history[-2]) < tol:
                break
        fit = MixtureFit(thetas, mixing, resp, annotators, history)
        if best is None or history[-1] > best.objective[-1]:
            best = fit
    return best


def assignment_accuracy(assignment: dict, truth: dict) -> float:
    """Return the fraction of annotators put in their true group, under the best matching of group labels."""
    keys = list(truth)
    if not keys or set(keys) - set(assignment):
        raise ValueError("assignment must cover every annotator of truth")
    labels = sorted({assignment[k] for k in keys} | {truth[k] for k in keys})
    best = 0.0
    for perm in itertools.permutations(labels):
        m = dict(zip(labels, perm))
        best = max(best, sum(m[assignment[k]] == truth[k] for k in keys) / len(keys))
    return best


def true_groups(rows: Sequence[dict]) -> dict:
    """Return annotator id → hidden group, from the rows' `group` column (evaluation only)."""
    return {r["annotator"]: r["group"] for r in rows}


# ------------------------------------------------------------------ MaxMin
def maxmin_reward(group_rewards: Sequence[RewardFn], mode: str = "batch") -> RewardFn:
    """Return the egalitarian reward of (eq-maxmin) from the (standardised) group rewards r_u.

    mode "batch" (the paper's recipe): score the whole batch by the group whose mean reward
    on it is lowest, R[argmin_u mean_b R[u, b]]. mode "sample": min_u r_u(x, y) per response.
    With one group both are that group's reward (standard RLHF).
    """
    if not group_rewards:
        raise ValueError("maxmin_reward needs at least one group reward")
    if mode not in ("batch", "sample"):
        raise ValueError(f"mode must be 'batch' or 'sample', got {mode!r}")

    def reward(prompts, responses):
        r = np.array([list(fn(prompts, responses)) for fn in group_rewards])  # [U, B]
        if mode == "sample":
            return r.min(0).tolist()
        return r[int(r.mean(1).argmin())].tolist()

    return reward


def match_groups(models: Sequence[FeatureRewardModel], world, prompts: Sequence[str],
                 responses: Sequence[str]) -> list[int]:
    """Return, for each true group g, the index of the learned model that correlates best with r_g (labels only)."""
    gold = world.group_rewards(prompts, responses)
    learned = [m.raw(prompts, responses) for m in models]
    corr = np.array([[np.corrcoef(g, l)[0, 1] for l in learned] for g in gold])
    best = max(itertools.permutations(range(len(models)), len(gold)),
               key=lambda perm: sum(corr[g, u] for g, u in enumerate(perm)))
    return list(best)


def group_gold(world, model, tokenizer, prompts: Sequence[str], samples_per_prompt: int, seed: int,
               max_new_tokens: int = 32) -> dict[str, float]:
    """Return each group's mean gold reward (and the mean formal fraction) of `model`'s samples."""
    from .rollout import sample

    repeated = [p for p in prompts for _ in range(samples_per_prompt)]
    s = sample(model, tokenizer, repeated, max_new_tokens=max_new_tokens, seed=seed)
    per_group = world.group_rewards(repeated, s.texts)
    out = {g: float(np.mean(r)) for g, r in zip(world.groups, per_group)}
    fractions = [world.score(p, t)["formal_fraction"] for p, t in zip(repeated, s.texts)]
    out["formal_fraction"] = float(np.nanmean(fractions)) if not all(map(math.isnan, fractions)) else float("nan")
    out["grammatical"] = float(np.mean([world.is_grammatical(p, t) for p, t in zip(repeated, s.texts)]))
    return out


def compare_single_and_maxmin(seed: int, steps: int, output_dir: str, n_annotators: int = 200,
                              pairs_per_annotator: int = 8, batch_prompts: int = 8, samples_per_prompt: int = 4,
                              learning_rate: float = 3e-4, beta: float = 0.05, eval_samples: int = 16,
                              mode: str = "batch", method: str = "grpo") -> dict:
    """Run the chapter's headline for one seed and return per-group gold rewards of SFT, single-RM and MaxMin.

    Pooled pairs from `n_annotators` (80/20) → a single BT reward model and a 2-group EM
    mixture → both standardised under π_ref (SFT) samples → `method` (GRPO) through the one
    loop with reward = the single RM, or = `maxmin_reward` of the two group RMs.
    """
    from .config import TrainConfig
    from .loop import train
    from .pocket import load_pocket
    from .rollout import sample
    from .worlds import get_world

    world = get_world("two_populations")
    rows = world.annotated_pairs(n_annotators, pairs_per_annotator, seed=seed)
    single = fit_reward_model(world, rows)
    mix = em_mixture(world, rows, n_groups=2, seed=seed)
    accuracy = assignment_accuracy(mix.assignment, true_groups(rows))
    model, tok = load_pocket("two_populations")
    ref = sample(model, tok, [p for p in world.prompts("train") for _ in range(16)], seed=seed + 17)
    single_n = single.normalise_under(ref.prompts, ref.texts)
    groups_n = [m.normalise_under(ref.prompts, ref.texts) for m in mix.reward_models(world)]
    order = match_groups(mix.reward_models(world), world, ref.prompts, ref.texts)
    out = {"seed": seed, "em_accuracy": accuracy, "em_mixing": mix.mixing[order].tolist(),
           "sft": group_gold(world, model, tok, world.prompts("eval"), eval_samples, seed + 99)}
    for name, reward_fn in (("single", single_n), ("maxmin", maxmin_reward(groups_n, mode))):
        config = TrainConfig(method=method, world="two_populations", output_dir=f"{output_dir}/{name}-{seed}",
                             seed=seed, max_steps=steps, learning_rate=learning_rate,
                             per_device_train_batch_size=batch_prompts, samples_per_prompt=samples_per_prompt,
                             beta=beta, max_new_tokens=32, save_steps=0, progress=False, logging_steps=0,
                             overwrite_output_dir=True)
        policy, _ = load_pocket("two_populations")
        result = train(config, model=policy, tokenizer=tok, reward_fn=reward_fn)
        out[name] = group_gold(world, result.model, tok, world.prompts("eval"), eval_samples, seed + 99)
    return out


# --------------------------------------------------------------------- DPA
def check_direction(direction, k: int = 2) -> np.ndarray:
    """Return `direction` as a unit vector of length k; a clear error for a wrong length, zero or non-finite vector.

    A non-unit vector is rescaled to ‖v‖ = 1 (DPA's preference is a direction only).
    """
    v = np.asarray(direction, dtype=float)
    if v.ndim != 1 or v.shape[0] != k:
        raise ValueError(f"a preference direction must be a vector of {k} weights (one per attribute), got shape "
                         f"{v.shape}; e.g. (cos θ, sin θ)")
    if not np.isfinite(v).all():
        raise ValueError(f"a preference direction must be finite, got {v.tolist()}")
    norm = float(np.linalg.norm(v))
    if norm < 1e-12:
        raise ValueError("a preference direction of zero length says nothing about the trade-off; give a non-zero "
                         "vector such as (cos θ, sin θ)")
    return v / norm


def direction_at(angle_degrees: float) -> np.ndarray:
    """Return v = (cos θ, sin θ) for θ in degrees: θ = 0 all formality, θ = 90 all casualness."""
    t = math.radians(angle_degrees)
    return np.array([math.cos(t), math.sin(t)])


def directional_scores(attributes: torch.Tensor, direction) -> torch.Tensor:
    """Return vᵀ r for attribute vectors `attributes` [..., k] and direction v [k] (eq-dpa-reward)."""
    attributes = torch.as_tensor(attributes, dtype=torch.float32)
    v = torch.as_tensor(check_direction(direction, attributes.shape[-1]), dtype=attributes.dtype)
    return attributes @ v


def dpa_rejection_rows(model, tokenizer, world, attribute_fn, prompts: Sequence[str], angles: Sequence[float],
                       k: int, seed: int, max_new_tokens: int = 32) -> list[dict]:
    """Return preference-conditioned RSF rows: for each (prompt, angle), the best of k samples under vᵀr.

    The policy answers the *directed* prompt (header with v in front); its k samples are
    scored by `attribute_fn(prompts, responses) -> [B, k_attr]` projected on v, and the top
    one becomes an SFT row {prompt: directed prompt, completion: best}.
    """
    from .rollout import sample

    rng = random.Random(seed)
    jobs = [(p, rng.choice(list(angles))) for p in prompts]
    directed = [world.directed_prompt(p, direction_at(a)) for p, a in jobs]
    repeated = [d for d in directed for _ in range(k)]
    s = sample(model, tokenizer, repeated, max_new_tokens=max_new_tokens, seed=seed)
    attrs = torch.tensor(np.asarray(attribute_fn(repeated, s.texts), dtype=float), dtype=torch.float32)
    rows = []
    for i, (_, angle) in enumerate(jobs):
        block = directional_scores(attrs[i * k:(i + 1) * k], direction_at(angle))
        j = int(block.argmax())
        rows.append({"prompt": directed[i], "completion": s.texts[i * k + j]})
    return rows


def dpa_train(model, tokenizer, world, attribute_fn, angles: Sequence[float], iterations: int, prompts_per_iter: int,
              k: int, sft_steps: int, output_dir: str, seed: int = 0, learning_rate: float = 5e-4,
              batch_size: int = 16):
    """Run `iterations` rounds of preference-conditioned RSF; every SFT stage goes through `alignlib.train`.

    Returns the trained model. Prompts are drawn (with repetition) from the world's train split.
    """
    from .config import TrainConfig
    from .loop import train

    train_prompts = world.prompts("train")
    for it in range(iterations):
        prompts = [train_prompts[i % len(train_prompts)] for i in range(prompts_per_iter)]
        rows = dpa_rejection_rows(model, tokenizer, world, attribute_fn, prompts, angles, k, seed=seed * 100 + it)
        config = TrainConfig(method="sft", world=world.name, output_dir=f"{output_dir}/dpa-{seed}-{it}", seed=seed + it,
                             max_steps=sft_steps, learning_rate=learning_rate, per_device_train_batch_size=batch_size,
                             save_steps=0, progress=False, logging_steps=0, overwrite_output_dir=True)
        model = train(config, model=model, tokenizer=tokenizer, dataset=rows).model
    return model


def steering_curve(model, tokenizer, world, angles: Sequence[float], prompts: Sequence[str], samples_per_prompt: int,
                   seed: int, max_new_tokens: int = 32) -> list[dict]:
    """Return, per angle, the mean attributes (formality, casualness) and formal fraction of the steered samples."""
    from .rollout import sample

    out = []
    for a in angles:
        directed = [world.directed_prompt(p, direction_at(a)) for p in prompts for _ in range(samples_per_prompt)]
        s = sample(model, tokenizer, directed, max_new_tokens=max_new_tokens, seed=seed)
        attrs = np.asarray(world.attributes(directed, s.texts))
        fractions = [world.score(p, t)["formal_fraction"] for p, t in zip(directed, s.texts)]
        out.append({"angle": float(a), "formality": float(attrs[:, 0].mean()), "casualness": float(attrs[:, 1].mean()),
                    "formal_fraction": float(np.nanmean(fractions))})
    return out
