"""Variational preference learning (VPL): a reward model conditioned on a latent user inferred from their labels.

Poddar et al. 2024, "Personalizing RLHF with Variational Preference Learning" (chapter 9, sec-ch9-vpl).
A user h is a latent z. An encoder reads a few pairs the user labelled (their *context*)
and outputs a Gaussian posterior q(z | context) = N(μ, diag σ²); the reward r(y, z) is a
decoder conditioned on z; training maximises the Bradley–Terry likelihood of the user's
other pairs (their *targets*) under r(·, z), minus a KL term towards N(0, I) (eq-vpl-elbo).

Here everything runs on the two-populations world's interpretable style code: the
"embedding" e_y of a response is `alignlib.diverse.style_features` φ(x, y) (the same φ as
the chapter's BT and EM reward models), where the paper uses a language model's
embedding. The parts follow the paper's code:

* PairEncoder: an MLP on [φ(y_w); φ(y_l)] of each context pair, then the **mean** over the
  user's context pairs. We drop the paper's self-attention layer over the pairs (a mean of
  per-pair codes is already independent of their order).
* Two linear heads give μ and log σ², each clamped to [−1, 1].
* z = normalize(μ + σ ⊙ ε) · √d (a point on the sphere of radius √d); at evaluation ε = 0,
  so z is the posterior mean μ, normalised the same way.
* Decoder: r(y, z) = MLP([φ(y); z]).

This is a reward model on features, trained with plain Adam like `fit_bt`; it is not a
policy trainer and does not go through `alignlib.train`.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .diverse import (
    assignment_accuracy,
    em_mixture,
    fit_bt,
    pair_differences,
    responsibilities,
    style_features,
    true_groups,
)
from .losses.reward import bradley_terry_loss
from .worlds.base import prompt_topic

LOG_VAR_CLAMP = 1.0  # μ and log σ² are clamped to [−1, 1], as in the paper's code


def kl_to_standard_normal(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Return KL(N(μ, diag σ²) ‖ N(0, I)) = −½ Σ_j (1 + log σ²_j − μ_j² − σ²_j) per user, [U] (μ, log σ²: [U, d])."""
    return -0.5 * (1.0 + log_var - mu.pow(2) - log_var.exp()).sum(-1)


def vpl_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, target_mask: torch.Tensor,
             mu: torch.Tensor, log_var: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Return the VPL loss (the negative ELBO per target pair, eq-vpl-elbo) and metrics.

    Shapes: U users, T target-pair slots per user (padded), latent size d.
    chosen_rewards, rejected_rewards: r(y_w, z_h) and r(y_l, z_h), [U, T], each user's rewards
    under their own sampled z_h; target_mask [U, T] (True where a slot holds a real target
    pair); mu, log_var [U, d] from the encoder on each user's context pairs.

        L = mean_{(h, i) targets} −log σ(r(y_w^i, z_h) − r(y_l^i, z_h))
            + w_KL · mean_h KL(N(μ_h, σ_h²) ‖ N(0, I))                         (eq-vpl-elbo)

    The first term is the Bradley–Terry loss (eq-bt-loss) of the z-conditioned reward; with
    w_KL = 0 and a decoder that ignores z it is plain BT. The KL is 0 exactly at μ = 0,
    log σ² = 0 and positive elsewhere.
    """
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.shape != target_mask.shape:
        raise ValueError(f"chosen {tuple(chosen_rewards.shape)}, rejected {tuple(rejected_rewards.shape)} and "
                         f"target_mask {tuple(target_mask.shape)} must all be [users, targets]")
    if mu.shape != log_var.shape or mu.dim() != 2 or mu.shape[0] != chosen_rewards.shape[0]:
        raise ValueError(f"mu {tuple(mu.shape)} and log_var {tuple(log_var.shape)} must both be [users, d] with "
                         f"{chosen_rewards.shape[0]} users")
    if kl_weight < 0:
        raise ValueError(f"kl_weight must be ≥ 0, got {kl_weight}")
    mask = target_mask.bool()
    if not mask.any():
        raise ValueError("target_mask selects no target pair: every user needs at least one pair to predict")
    reconstruction, bt_metrics = bradley_terry_loss(chosen_rewards[mask], rejected_rewards[mask])
    kl = kl_to_standard_normal(mu, log_var).mean()
    loss = reconstruction + kl_weight * kl
    metrics = {"loss": loss.item(), "bt_loss": reconstruction.item(), "kl": kl.item(),
               "accuracy": bt_metrics["accuracy"]}
    return loss, metrics


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


class VPLModel(nn.Module):
    """PairEncoder → mean over the context → (μ, log σ²) → z on the √d-sphere → decoder r(y, z) = MLP([φ(y); z])."""

    def __init__(self, feature_dim: int, latent_dim: int = 8, hidden_dim: int = 64):
        super().__init__()
        if feature_dim < 1 or latent_dim < 1 or hidden_dim < 1:
            raise ValueError(f"feature_dim, latent_dim and hidden_dim must be ≥ 1, got {feature_dim}, {latent_dim}, "
                             f"{hidden_dim}")
        self.feature_dim, self.latent_dim = feature_dim, latent_dim
        self.pair_encoder = _mlp([2 * feature_dim, hidden_dim, hidden_dim, hidden_dim])
        self.mean_head = nn.Linear(hidden_dim, latent_dim)
        self.log_var_head = nn.Linear(hidden_dim, latent_dim)
        self.decoder = _mlp([feature_dim + latent_dim, hidden_dim, hidden_dim, 1])

    def encode(self, context_chosen: torch.Tensor, context_rejected: torch.Tensor,
               context_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (μ, log σ²), each [U, d], from context features [U, K, D] and their mask [U, K] (mean over pairs)."""
        if context_chosen.shape != context_rejected.shape or context_chosen.shape[:2] != context_mask.shape:
            raise ValueError(f"context chosen {tuple(context_chosen.shape)}, rejected {tuple(context_rejected.shape)} "
                             f"and mask {tuple(context_mask.shape)} do not match ([users, pairs, features])")
        if context_chosen.shape[-1] != self.feature_dim:
            raise ValueError(f"context features have {context_chosen.shape[-1]} columns, the model expects "
                             f"{self.feature_dim}")
        counts = context_mask.float().sum(1, keepdim=True)
        if (counts == 0).any():
            raise ValueError("a user has an empty context: VPL infers z from at least one labelled pair of theirs")
        codes = self.pair_encoder(torch.cat([context_chosen, context_rejected], -1))  # [U, K, H]
        pooled = (codes * context_mask.float().unsqueeze(-1)).sum(1) / counts         # [U, H]
        mu = self.mean_head(pooled).clamp(-LOG_VAR_CLAMP, LOG_VAR_CLAMP)
        log_var = self.log_var_head(pooled).clamp(-LOG_VAR_CLAMP, LOG_VAR_CLAMP)
        return mu, log_var

    def latent(self, mu: torch.Tensor, log_var: torch.Tensor, sample: bool,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Return z = normalize(μ + σ ⊙ ε) · √d, [U, d]; ε ~ N(0, I) when `sample`, else ε = 0 (evaluation: z = μ)."""
        if sample:
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
            mu = mu + torch.exp(0.5 * log_var) * eps
        return F.normalize(mu, dim=-1) * math.sqrt(self.latent_dim)

    def reward(self, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Return r(y, z), [U, T], for response features [U, T, D] (or [T, D], shared by all users) and z [U, d]."""
        if features.dim() == 2:
            features = features.unsqueeze(0).expand(z.shape[0], -1, -1)
        if features.shape[0] != z.shape[0] or features.shape[-1] != self.feature_dim:
            raise ValueError(f"features {tuple(features.shape)} do not fit z {tuple(z.shape)} and "
                             f"{self.feature_dim} feature columns")
        zz = z.unsqueeze(1).expand(-1, features.shape[1], -1)
        return self.decoder(torch.cat([features, zz], -1)).squeeze(-1)


@dataclass
class UserPairs:
    """Preference rows grouped by annotator and turned into padded feature tensors."""

    chosen: torch.Tensor    # [U, P, D] φ(x, y_w) of each user's pairs
    rejected: torch.Tensor  # [U, P, D] φ(x, y_l)
    mask: torch.Tensor      # [U, P] True where the slot holds a real pair
    annotators: list        # the annotator id of each row of the tensors


def user_pairs(world, rows: Sequence[dict]) -> UserPairs:
    """Group pooled rows {prompt, chosen, rejected, annotator} by annotator into padded φ tensors (`style_features`)."""
    if not rows:
        raise ValueError("no preference rows: pass rows with prompt, chosen, rejected and annotator")
    if any("annotator" not in r for r in rows):
        raise ValueError("VPL needs preference rows with an 'annotator' column (who labelled each pair); "
                         "see TwoPopulationsWorld.annotated_pairs")
    annotators = sorted({r["annotator"] for r in rows}, key=str)
    index = {h: i for i, h in enumerate(annotators)}
    prompts = [r["prompt"] for r in rows]
    fw = style_features(world, prompts, [r["chosen"] for r in rows])
    fl = style_features(world, prompts, [r["rejected"] for r in rows])
    counts = np.zeros(len(annotators), dtype=int)
    slot = []
    for r in rows:
        u = index[r["annotator"]]
        slot.append((u, counts[u]))
        counts[u] += 1
    chosen = torch.zeros(len(annotators), int(counts.max()), fw.shape[1])
    rejected = torch.zeros_like(chosen)
    mask = torch.zeros(len(annotators), int(counts.max()), dtype=torch.bool)
    for (u, j), a, b in zip(slot, fw, fl):
        chosen[u, j], rejected[u, j], mask[u, j] = torch.as_tensor(a), torch.as_tensor(b), True
    return UserPairs(chosen, rejected, mask, annotators)


def rows_of(rows: Sequence[dict], annotator) -> list[dict]:
    """Return the rows one annotator labelled (a user's context for `VPLFit.predict`)."""
    mine = [r for r in rows if r.get("annotator") == annotator]
    if not mine:
        known = sorted({r.get("annotator") for r in rows}, key=str)
        raise ValueError(f"unknown annotator {annotator!r}: the rows hold annotators {known[:10]}"
                         f"{' …' if len(known) > 10 else ''}")
    return mine


@dataclass
class VPLFit:
    """A trained VPL reward model on `style_features`, with its training history."""

    model: VPLModel
    world: object
    history: list[dict] = field(default_factory=list)

    def latent_of(self, context_rows: Sequence[dict]) -> torch.Tensor:
        """Return z [d] = normalize(μ)·√d inferred from one user's context pairs (ε = 0)."""
        if not context_rows:
            raise ValueError("empty context: pass at least one pair the user labelled (prompt, chosen, rejected)")
        owners = {r.get("annotator") for r in context_rows}
        if len(owners) > 1:
            raise ValueError(f"context rows come from several annotators {sorted(owners, key=str)}; "
                             "pass one user's pairs (see rows_of)")
        prompts = [r["prompt"] for r in context_rows]
        fw = torch.as_tensor(style_features(self.world, prompts, [r["chosen"] for r in context_rows]),
                             dtype=torch.float32)
        fl = torch.as_tensor(style_features(self.world, prompts, [r["rejected"] for r in context_rows]),
                             dtype=torch.float32)
        with torch.no_grad():
            mu, log_var = self.model.encode(fw[None], fl[None], torch.ones(1, len(context_rows), dtype=torch.bool))
            return self.model.latent(mu, log_var, sample=False)[0]

    def reward(self, context_rows: Sequence[dict], prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Return r(x, y, z) [N] for responses, with z inferred from one user's context pairs."""
        z = self.latent_of(context_rows)
        feats = torch.as_tensor(style_features(self.world, prompts, responses), dtype=torch.float32)
        with torch.no_grad():
            return self.model.reward(feats, z[None])[0].numpy()

    def predict(self, context_rows: Sequence[dict], query_rows: Sequence[dict]) -> np.ndarray:
        """Return P(chosen ≻ rejected | user) = σ(r(y_w, z) − r(y_l, z)) [N] for query rows, z from the context."""
        if not query_rows:
            raise ValueError("no query rows: pass rows with prompt, chosen and rejected to score")
        prompts = [r["prompt"] for r in query_rows]
        margin = (self.reward(context_rows, prompts, [r["chosen"] for r in query_rows])
                  - self.reward(context_rows, prompts, [r["rejected"] for r in query_rows]))
        return 1.0 / (1.0 + np.exp(-margin))


def train_vpl(world, rows: Sequence[dict], steps: int = 1500, latent_dim: int = 16, hidden_dim: int = 32,
              kl_weight: float = 0.01, learning_rate: float = 3e-3, weight_decay: float = 1e-4,
              max_context: int | None = None, seed: int = 0) -> VPLFit:
    """Fit VPL to pooled rows with an `annotator` column by Adam on `vpl_loss`, full batch over users.

    Every step, each user's pairs are split at random: c ~ Uniform{1, …, min(n_h − 1, max_context)}
    of them form the context that the encoder reads, the rest are the targets whose BT
    likelihood is maximised under r(·, z_h), z_h sampled from q(z | context). So the model
    learns to infer a user from 1 to max_context pairs. The `group` column is never read.
    Defaults: w_KL = 0.01 as in the paper's code (held fixed; the code also anneals it), a
    latent of d = 16 (the code's default is 512 for LLM embeddings) for the 28 style features.
    """
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    data = user_pairs(world, rows)
    n_pairs = data.mask.sum(1)
    if (n_pairs < 2).any():
        raise ValueError("every annotator needs at least 2 pairs (one to infer z from, one to predict); "
                         f"{int((n_pairs < 2).sum())} annotator(s) have fewer")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = VPLModel(data.chosen.shape[-1], latent_dim, hidden_dim)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    top = n_pairs - 1 if max_context is None else torch.clamp(n_pairs - 1, max=max_context)
    history = []
    for step in range(steps):
        # a random order of each user's real pairs (padding sorts last), then the first c are the context
        keys = torch.rand(data.mask.shape, generator=generator).masked_fill(~data.mask, 2.0)
        rank = keys.argsort(1).argsort(1)
        c = 1 + (torch.rand(len(top), generator=generator) * top).long()  # Uniform{1..top}
        context_mask = rank < c[:, None]
        target_mask = data.mask & ~context_mask
        mu, log_var = model.encode(data.chosen, data.rejected, context_mask)
        z = model.latent(mu, log_var, sample=True, generator=generator)
        loss, metrics = vpl_loss(model.reward(data.chosen, z), model.reward(data.rejected, z), target_mask,
                                 mu, log_var, kl_weight)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 50 == 0 or step == steps - 1:
            history.append({"step": step, **metrics})
    model.eval()
    return VPLFit(model, world, history)


# ------------------------------------------------------------ evaluation on gold
@dataclass
class QueryPairs:
    """Held-out response pairs with each group's gold margin r_g(x, a) − r_g(x, b)."""

    prompts: list
    a: list
    b: list
    gold: np.ndarray        # [G, Q] gold margin of a over b for each group
    features_a: np.ndarray  # [Q, D] style_features of a
    features_b: np.ndarray  # [Q, D]

    def kind(self, name: str) -> np.ndarray:
        """Return the mask [Q] of "conflicting" pairs (the groups' gold orders are opposite) or "agreeing" ones."""
        product = self.gold[0] * self.gold[1]
        if name == "conflicting":
            return product < 0
        if name == "agreeing":
            return product > 0
        raise ValueError(f"unknown kind {name!r}; use 'conflicting' or 'agreeing'")


def gold_query_pairs(world, n: int, seed: int, split: str = "eval") -> QueryPairs:
    """Return n pairs of `random_response` answers to `split` prompts, with both groups' gold margins."""
    if n < 1:
        raise ValueError(f"need n ≥ 1 query pairs, got {n}")
    rng = random.Random(seed)
    prompts = [rng.choice(world.prompts(split)) for _ in range(n)]
    a = [world.random_response(rng, prompt_topic(p)) for p in prompts]
    b = [world.random_response(rng, prompt_topic(p)) for p in prompts]
    gold = np.array(world.group_rewards(prompts, a)) - np.array(world.group_rewards(prompts, b))
    return QueryPairs(prompts, a, b, gold, style_features(world, prompts, a), style_features(world, prompts, b))


def bt_margins(theta: np.ndarray, context: UserPairs, k: int, queries: QueryPairs) -> np.ndarray:
    """Return the single BT model's margins θᵀ(φ(a) − φ(b)), [U, Q]: the same for every user whatever k."""
    m = (queries.features_a - queries.features_b) @ theta
    return np.broadcast_to(m, (len(context.annotators), len(m)))


def em_margins(mix, context: UserPairs, k: int, queries: QueryPairs) -> np.ndarray:
    """Return P(a ≻ b | user) − ½, [U, Q], under the EM mixture with each user's responsibilities from k pairs.

    γ_hu ∝ w_u Π_{i ≤ k} σ(θ_uᵀΔ_i) (eq-em-estep, `diverse.responsibilities`); k = 0 gives γ = w.
    """
    users = len(context.annotators)
    diffs = (context.chosen[:, :k] - context.rejected[:, :k]).reshape(-1, context.chosen.shape[-1]).numpy()
    gamma = responsibilities(mix.thetas, mix.mixing, diffs.astype(float), np.repeat(np.arange(users), k), users)
    dq = queries.features_a - queries.features_b
    p = 1.0 / (1.0 + np.exp(-(dq @ mix.thetas.T)))  # [Q, U_groups]
    return gamma @ p.T - 0.5


def vpl_margins(fit: VPLFit, context: UserPairs, k: int, queries: QueryPairs) -> np.ndarray:
    """Return r(a, z_h) − r(b, z_h), [U, Q], with z_h = μ from each user's first k pairs (k ≥ 1)."""
    if k < 1:
        raise ValueError("VPL infers z from at least one pair of the user's; k = 0 has no context")
    with torch.no_grad():
        mu, log_var = fit.model.encode(context.chosen[:, :k], context.rejected[:, :k], context.mask[:, :k])
        z = fit.model.latent(mu, log_var, sample=False)
        fa = torch.as_tensor(queries.features_a, dtype=torch.float32)
        fb = torch.as_tensor(queries.features_b, dtype=torch.float32)
        return (fit.model.reward(fa, z) - fit.model.reward(fb, z)).numpy()


def group_accuracy(margins: np.ndarray, user_groups: np.ndarray, queries: QueryPairs, kind: str) -> list[float]:
    """Return, per group g, the mean over g's users and the `kind` pairs of [sign(margin) = sign(r_g(a) − r_g(b))].

    A tie in the model's margin counts as half right. NaN for a group with no user.
    """
    sel = queries.kind(kind)
    out = []
    for g in range(queries.gold.shape[0]):
        users = user_groups == g
        if not users.any() or not sel.any():
            out.append(float("nan"))
            continue
        m, gold = margins[users][:, sel], queries.gold[g, sel][None, :]
        out.append(float(((m * gold > 0) + 0.5 * (m == 0)).mean()))
    return out


def compare_by_context(world, rows: Sequence[dict], ks: Sequence[int], seed: int, n_test_users: int = 200,
                       n_queries: int = 300, vpl_kwargs: dict | None = None) -> dict:
    """Train single BT, the EM mixture and VPL on `rows`; score new users by k of their own pairs, on gold.

    The test users are fresh annotators (`annotated_pairs` with another seed), each giving
    max(ks) labelled pairs; their first k pairs are the context. The queries are new pairs on
    held-out prompts, judged by the gold reward of the user's (hidden) group. Returns
    {"accuracy": [{method, k, kind, group, accuracy}], "users": per-group test users, "queries": per-kind count,
    "vpl": the VPLFit, "em_accuracy"}.
    """
    if not ks or min(ks) < 0:
        raise ValueError(f"ks must be context sizes ≥ 0, got {list(ks)}")
    theta = fit_bt(pair_differences(world, rows))
    mix = em_mixture(world, rows, n_groups=2, seed=seed)
    fit = train_vpl(world, rows, seed=seed, **(vpl_kwargs or {}))
    test_rows = world.annotated_pairs(n_test_users, max(max(ks), 1), seed=10_000 + seed)
    context = user_pairs(world, test_rows)
    truth = true_groups(test_rows)
    user_groups = np.array([truth[h] for h in context.annotators])
    queries = gold_query_pairs(world, n_queries, seed=20_000 + seed)
    scorers = {"single BT": lambda k: bt_margins(theta, context, k, queries),
               "EM mixture": lambda k: em_margins(mix, context, k, queries),
               "VPL": lambda k: vpl_margins(fit, context, k, queries) if k > 0 else None}
    accuracy = []
    for name, scorer in scorers.items():
        for k in ks:
            margins = scorer(k)
            if margins is None:
                continue
            for kind in ("conflicting", "agreeing"):
                for g, acc in enumerate(group_accuracy(margins, user_groups, queries, kind)):
                    accuracy.append({"method": name, "k": k, "kind": kind, "group": g, "accuracy": acc})
    return {"accuracy": accuracy, "vpl": fit,
            "users": [int((user_groups == g).sum()) for g in range(len(world.groups))],
            "queries": {kind: int(queries.kind(kind).sum()) for kind in ("conflicting", "agreeing")},
            "em_accuracy": assignment_accuracy(mix.assignment, true_groups(rows))}
