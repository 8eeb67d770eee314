"""Weight-space averaging of models: model averaging against the alignment tax, and model soups.

Two fine-tuned descendants of one pretrained model usually lie in one linear
basin, so their weights can be averaged. Two uses in the book:

* **Model averaging (MA)** against the alignment tax (Lin et al.): interpolate the
  SFT (pre-RLHF) and the RLHF weights,

      θ(α) = (1 − α) θ_SFT + α θ_RL,                              (eq-ma)

  α = 0 is the SFT model, α = 1 the RLHF model. *Heterogeneous* (partwise) MA uses
  one α per block of layers; `block_alphas` builds such a per-parameter map.
  (The paper writes the weight on θ_SFT as α; we put α on the aligned model so that
  "more α = more alignment".)
* **Soups** (SALSA, Chegini et al.): the reference of RLHF is the uniform average
  of several SFT models, θ_soup = (1/M) Σ_m θ_m.                 (eq-soup)

Only floating-point tensors are averaged; integer buffers must agree and are copied.
"""

from __future__ import annotations

import copy
import re
from typing import Callable, Mapping, Sequence

import torch

AlphaSpec = float | Mapping[str, float] | Callable[[str], float]


def _check_compatible(states: Sequence[Mapping[str, torch.Tensor]]) -> None:
    first = states[0]
    for m, other in enumerate(states[1:], 1):
        missing, extra = sorted(set(first) - set(other)), sorted(set(other) - set(first))
        if missing or extra:
            raise ValueError(f"cannot average models with different parameters: model {m} lacks {missing[:3]} and "
                             f"has extra {extra[:3]}; average only fine-tuned copies of one architecture")
        for name, tensor in first.items():
            o = other[name]
            if o.shape != tensor.shape:
                raise ValueError(f"cannot average {name!r}: shape {tuple(tensor.shape)} in model 0 but "
                                 f"{tuple(o.shape)} in model {m} (different architectures or vocabularies)")
            if o.dtype != tensor.dtype:
                raise ValueError(f"cannot average {name!r}: dtype {tensor.dtype} in model 0 but {o.dtype} in model "
                                 f"{m}; cast both models to one dtype first (e.g. model.float())")


def _alpha_of(alpha: AlphaSpec, name: str) -> float:
    if callable(alpha):
        value = alpha(name)
    elif isinstance(alpha, Mapping):
        if name not in alpha:
            raise ValueError(f"per-parameter alpha has no entry for {name!r}; give every parameter a value "
                             "(see block_alphas)")
        value = alpha[name]
    else:
        value = alpha
    return float(value)


def interpolate_state_dicts(start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor],
                            alpha: AlphaSpec) -> dict[str, torch.Tensor]:
    """Return (1 − α) start + α end for every floating-point tensor (eq-ma); other tensors must be equal.

    alpha: one number, a {parameter name: α} mapping, or a function of the name
    (heterogeneous averaging). α = 0 returns `start`'s tensors exactly, α = 1 `end`'s
    (no floating-point mixing at the endpoints). α outside [0, 1] extrapolates and is allowed.
    """
    _check_compatible([start, end])
    out = {}
    for name, a in start.items():
        b = end[name]
        if not torch.is_floating_point(a):
            if not torch.equal(a, b):
                raise ValueError(f"cannot average the non-float tensor {name!r}: it differs between the models")
            out[name] = a.clone()
            continue
        w = _alpha_of(alpha, name)
        out[name] = a.clone() if w == 0.0 else b.clone() if w == 1.0 else torch.lerp(a, b, w)
    return out


def average_state_dicts(states: Sequence[Mapping[str, torch.Tensor]],
                        weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """Return Σ_m w_m θ_m (default: the uniform soup, eq-soup); weights must be ≥ 0 and sum to 1."""
    if len(states) < 1:
        raise ValueError("need at least one model to average")
    weights = [1.0 / len(states)] * len(states) if weights is None else list(weights)
    if len(weights) != len(states):
        raise ValueError(f"got {len(weights)} weights for {len(states)} models")
    if any(w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"soup weights must be ≥ 0 and sum to 1, got {weights}")
    _check_compatible(states)
    out = {}
    for name, first in states[0].items():
        if not torch.is_floating_point(first):
            if any(not torch.equal(first, s[name]) for s in states[1:]):
                raise ValueError(f"cannot average the non-float tensor {name!r}: it differs between the models")
            out[name] = first.clone()
            continue
        acc = torch.zeros_like(first, dtype=torch.float64)
        for w, s in zip(weights, states):
            acc += w * s[name].double()
        out[name] = acc.to(first.dtype)
    return out


def _with_state(template: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    model = copy.deepcopy(template)
    model.load_state_dict(state)
    return model


def interpolate_models(start: torch.nn.Module, end: torch.nn.Module, alpha: AlphaSpec) -> torch.nn.Module:
    """Return a new model with weights θ(α) = (1 − α) θ_start + α θ_end (eq-ma); the inputs are not changed."""
    return _with_state(start, interpolate_state_dicts(start.state_dict(), end.state_dict(), alpha))


def soup(models: Sequence[torch.nn.Module], weights: Sequence[float] | None = None) -> torch.nn.Module:
    """Return a new model whose weights are the (weighted) average of `models`' weights (eq-soup)."""
    if not models:
        raise ValueError("soup needs at least one model")
    return _with_state(models[0], average_state_dicts([m.state_dict() for m in models], weights))


def layer_index(name: str) -> int | None:
    """Return the transformer block number in a parameter name ("model.layers.3.mlp..." → 3), else None."""
    found = re.search(r"\.(?:layers|h|blocks)\.(\d+)\.", name)
    return int(found.group(1)) if found else None


def block_alphas(model: torch.nn.Module, alphas: Sequence[float], outside: float | None = None) -> dict[str, float]:
    """Return {parameter name: α} for heterogeneous averaging: the blocks are split into len(alphas) equal parts.

    Part j (bottom to top) gets alphas[j]. Parameters outside the blocks (embeddings,
    final norm, LM head) get `outside` (default: the mean of `alphas`).
    """
    names = list(model.state_dict())
    layers = sorted({i for i in map(layer_index, names) if i is not None})
    if not layers:
        raise ValueError("found no numbered transformer blocks (…layers.N.…) in the model's parameter names")
    if not 1 <= len(alphas) <= len(layers):
        raise ValueError(f"need between 1 and {len(layers)} (the number of blocks) alphas, got {len(alphas)}")
    outside = sum(alphas) / len(alphas) if outside is None else outside
    out = {}
    for name in names:
        i = layer_index(name)
        out[name] = outside if i is None else float(alphas[min(len(alphas) - 1, i * len(alphas) // len(layers))])
    return out


__all__ = ["interpolate_state_dicts", "average_state_dicts", "interpolate_models", "soup", "layer_index",
           "block_alphas"]
