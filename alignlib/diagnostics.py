"""Diagnostics of pairwise training: log-probabilities of fixed preference pairs under a model.

Used by the DPO-family chapter (chapter 4) to watch what a margin loss does to each side of a
pair separately (gradient entanglement, Yuan et al. 2024; eq-gradient-entanglement): the loss
only sees the margin h = ρ(y_w) − ρ(y_l), so ℓ(y_w) and ℓ(y_l) can both fall while h grows;
and to measure whether a trained model *ranks* answers like gold does, against
the ranking accuracy its exact optimum would reach (Chen et al. 2024; eq-idealised-ranking); and to
read DPO's implicit reward β·log π_θ/π_ref as a judge of pairs (`ImplicitReward`,
compared with an explicit reward model by Lin et al.) and token by token
(`token_implicit_rewards`, `token_credit`: the credit of "From r to Q*", Rafailov et al. 2024).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .data import collate_examples, tokenize_rows
from .logprobs import sequence_logprobs


@torch.no_grad()
def pair_logprobs(model, tokenizer, rows: Sequence[dict], batch_size: int = 128,
                  max_completion_length: int | None = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (ℓ(y_w) [N], ℓ(y_l) [N]) of `rows` (prompt/chosen/rejected) under `model`, in float32 on the CPU.

    Rows are tokenised exactly as the training loop tokenises them (`alignlib.data`),
    so the numbers are the log-probs the DPO loss saw (eq-seq-logp).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    examples = tokenize_rows(list(rows), tokenizer, "pairs", max_completion_length=max_completion_length)
    chosen, rejected = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate_examples(chunk, tokenizer.pad_token_id).items()}
        logps, _, _ = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        logps = logps.float().cpu()
        chosen.append(logps[: len(chunk)])
        rejected.append(logps[len(chunk):])
    if was_training:
        model.train()
    return torch.cat(chosen), torch.cat(rejected)


def _gold_order(truth: torch.Tensor) -> torch.Tensor:
    """Map gold verdicts (1: a better, 0: b better, 0.5: tie) to +1 / −1 / 0."""
    return torch.sign(torch.as_tensor(truth, dtype=torch.float32) - 0.5)


def ranking_accuracy(logp_a: torch.Tensor, logp_b: torch.Tensor, truth) -> float:
    """Return the fraction of non-tied pairs that a model ranks like gold: ℓ(a) > ℓ(b) exactly where gold prefers a.

    logp_a, logp_b: [N] log π(y|x) of the two answers (sums over tokens, or
    per-token means for the length-normalised variant); truth: [N] gold verdicts
    (`World.gold_verdict`). Pairs that gold ties are left out. This is the
    ranking accuracy of Chen et al. (2024; chapter 4) with gold in place of
    the raters' majority.
    """
    order = _gold_order(truth)
    keep = order != 0
    if not keep.any():
        raise ValueError("every pair is a gold tie: ranking accuracy is undefined")
    return (torch.sign(logp_a - logp_b)[keep] == order[keep]).float().mean().item()


def idealised_ranking_accuracy(ref_a: torch.Tensor, ref_b: torch.Tensor, reward_gap: torch.Tensor, beta: float,
                               truth, tie_ratio: float = 1.05) -> float:
    """Return the ranking accuracy of the exact KL-regularised optimum π* ∝ π_ref·exp(r*/β) (Chen et al. 2024).

    log π*(a)/π*(b) = log π_ref(a)/π_ref(b) + (r*(a) − r*(b))/β, where reward_gap = r*(a) − r*(b)
    is on the Bradley–Terry log-odds scale of the labels (for a world's oracle:
    gold gap / oracle temperature). A ratio within [1/tie_ratio, tie_ratio] is a
    predicted tie and counts as wrong (Chen et al.'s 1.05 band). β → 0 gives 1
    on non-tied pairs; β → ∞ gives π_ref's own ranking accuracy.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    log_ratio = (ref_a - ref_b) + torch.as_tensor(reward_gap, dtype=torch.float32) / beta
    band = math.log(tie_ratio)
    predicted = torch.where(log_ratio.abs() <= band, torch.zeros_like(log_ratio), torch.sign(log_ratio))
    order = _gold_order(truth)
    keep = order != 0
    if not keep.any():
        raise ValueError("every pair is a gold tie: ranking accuracy is undefined")
    return (predicted[keep] == order[keep]).float().mean().item()


# ------------------------------------------------ DPO's implicit reward as a judge, and per token
def token_implicit_rewards(policy_token_logps: torch.Tensor, ref_token_logps: torch.Tensor, mask: torch.Tensor,
                           beta: float) -> torch.Tensor:
    """Return the per-token implicit reward β·(log π_θ(y_t|x, y_<t) − log π_ref(y_t|x, y_<t)), 0 off the mask.

    policy_token_logps, ref_token_logps, mask: [B, T] (token log-probs as
    `alignlib.logprobs.sequence_logprobs` returns them, mask 1 on completion
    tokens). Summed over t this is the sequence implicit reward β·ρ_θ(y) of
    eq-log-ratio (the book's Notation page); read token by token it is the credit that
    "From r to Q*" (Rafailov et al. 2024) interprets as an optimal advantage.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if policy_token_logps.shape != ref_token_logps.shape or policy_token_logps.shape != mask.shape:
        raise ValueError(f"shapes differ: policy {tuple(policy_token_logps.shape)}, reference "
                         f"{tuple(ref_token_logps.shape)}, mask {tuple(mask.shape)}; pass token tensors of one batch")
    return beta * (policy_token_logps.float() - ref_token_logps.float()) * mask.float()


@torch.no_grad()
def completion_token_logprobs(model, tokenizer, prompts: Sequence[str], responses: Sequence[str],
                              batch_size: int = 128, max_completion_length: int | None = 64
                              ) -> list[tuple[list[int], torch.Tensor]]:
    """Return, per (prompt, response), (completion token ids, log π(y_t | x, y_<t) of each of them [len]).

    Tokenised as the training loop tokenises (prompt with BOS, completion
    followed by EOS), so the ids and log-probs are those the DPO loss saw.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; pass one prompt per response")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = [{"prompt": p, "completion": r} for p, r in zip(prompts, responses)]
    examples = tokenize_rows(rows, tokenizer, "sft", max_completion_length=max_completion_length)
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate_examples(chunk, tokenizer.pad_token_id).items()}
        _, token_lp, mask = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"],
                                              batch["completion_mask"])
        token_lp = token_lp.float().cpu()
        for i, ex in enumerate(chunk):
            start_t = len(ex.prompt_ids) - 1  # token t of the row is read at position t − 1
            ids = ex.completions[0]
            out.append((ids, token_lp[i, start_t : start_t + len(ids)].clone()))
    if was_training:
        model.train()
    return out


def _reference_model(reference, policy):
    """Accept a model or an `alignlib.models.Reference` (as `TrainResult.reference` is)."""
    from .models import Reference

    if isinstance(reference, Reference):
        if reference.model is None:
            raise ValueError("this reference is the policy with its LoRA adapters off; pass a separate reference "
                             "model (e.g. a frozen copy of the SFT model) to score implicit rewards")
        return reference.model
    if reference is policy:
        raise ValueError("the reference is the policy itself, so every implicit reward would be 0; "
                         "pass the SFT model the policy was trained from")
    return reference


def token_credit(policy, reference, tokenizer, prompts: Sequence[str], responses: Sequence[str], beta: float,
                 max_completion_length: int | None = 64) -> list[tuple[list[str], torch.Tensor]]:
    """Return, per response, (its tokens as strings, EOS included; their implicit rewards [len]).

    The per-token reward is `token_implicit_rewards` of a trained policy
    against its reference; its sum is the implicit reward of the whole response.
    """
    reference = _reference_model(reference, policy)
    pol = completion_token_logprobs(policy, tokenizer, prompts, responses, max_completion_length=max_completion_length)
    ref = completion_token_logprobs(reference, tokenizer, prompts, responses,
                                    max_completion_length=max_completion_length)
    out = []
    for (ids, lp), (_, lp_ref) in zip(pol, ref):
        rewards = token_implicit_rewards(lp, lp_ref, torch.ones_like(lp), beta)
        out.append((tokenizer.convert_ids_to_tokens(ids), rewards))
    return out


class ImplicitReward:
    """DPO's implicit reward r̂(x, y) = β·(log π_θ(y|x) − log π_ref(y|x)) as `reward_fn(prompts, responses)`.

    Used as a judge exactly like a trained `RewardModel` (e.g. with
    `alignlib.reward_model.preference_accuracy`), which is how Lin et al. (2024)
    compare the two. The prompt-only term β·log Z(x) of eq-reward-from-policy is
    missing, which is harmless for comparing two answers to the same prompt.
    """

    def __init__(self, policy, reference, tokenizer, beta: float, max_completion_length: int | None = 64):
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.policy, self.reference = policy, _reference_model(reference, policy)
        self.tokenizer, self.beta, self.max_completion_length = tokenizer, beta, max_completion_length

    def scores(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Return r̂ [N] of the (prompt, response) rows."""
        pol = completion_token_logprobs(self.policy, self.tokenizer, prompts, responses,
                                        max_completion_length=self.max_completion_length)
        ref = completion_token_logprobs(self.reference, self.tokenizer, prompts, responses,
                                        max_completion_length=self.max_completion_length)
        return torch.tensor([self.beta * (lp.sum() - lp_ref.sum()).item() for (_, lp), (_, lp_ref) in zip(pol, ref)])

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return self.scores(prompts, responses).tolist()


def reviews_token_roles(prompt: str, tokens: Sequence[str]) -> list[str]:
    """Return the role of each token of a reviews-world answer in the gold judgement (its word classes).

    Roles: "positive word" / "negative word" (the sentiment lexicon of
    `alignlib.worlds.reviews`: adjectives, verbs, "recommend"), the same prefixed
    "negated " when "not" (optionally followed by "very"/"really") comes right
    before it, so gold flips its sign; "not"; "prompt's item" / "other item"
    (an item word that is or is not the one the prompt asks about; the
    latter costs an off-topic penalty); "end" for the end-of-sequence token
    (any token not in the world's vocabulary of words, e.g. "<eos>"); "other".
    """
    from .worlds.reviews import ADJECTIVES, ITEMS, VERB_BASE, VERBS, prompt_item

    polarity = {**ADJECTIVES, **{w: p for w, (_, p) in VERBS.items()}, **VERB_BASE, "recommend": 1.0}
    item = prompt_item(prompt)
    roles = []
    for j, word in enumerate(tokens):
        negated = (j >= 1 and tokens[j - 1] == "not") or (
            j >= 2 and tokens[j - 2] == "not" and tokens[j - 1] in ("very", "really"))
        if word in polarity:
            roles.append(("negated " if negated else "") + ("positive word" if polarity[word] > 0 else "negative word"))
        elif word in ITEMS:
            roles.append("prompt's item" if word == item else "other item")
        elif word == "not":
            roles.append("not")
        elif word.startswith("<") and word.endswith(">"):
            roles.append("end")
        else:
            roles.append("other")
    return roles


def mean_credit_by_role(prompts: Sequence[str], credit: Sequence[tuple[Sequence[str], torch.Tensor]],
                        roles_fn=reviews_token_roles) -> dict[str, tuple[float, int]]:
    """Return {role: (mean per-token reward, number of tokens)} over `credit` (as `token_credit` returns it)."""
    if len(prompts) != len(credit):
        raise ValueError(f"{len(prompts)} prompts but {len(credit)} credited answers; pass one prompt per answer")
    sums: dict[str, list[float]] = {}
    for prompt, (tokens, rewards) in zip(prompts, credit):
        for role, r in zip(roles_fn(prompt, tokens), rewards.tolist()):
            entry = sums.setdefault(role, [0.0, 0])
            entry[0] += r
            entry[1] += 1
    return {role: (total / count, count) for role, (total, count) in sorted(sums.items())}


def contrastive_token_rewards(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], good_prefix: str,
                              bad_prefix: str, max_completion_length: int | None = 64) -> list[torch.Tensor]:
    """Return, per (prompt, response), r_t = log π(y_t | good ⊕ x, y_<t) − log π(y_t | bad ⊕ x, y_<t) [len].

    T-REG's self-generated token rewards (Zhou et al. 2024; chapter 4, eq-treg-token-reward): the
    same model, prompted to do well and to do badly, scores every token of the
    response; tokens the "good" prompt makes likelier get r_t > 0. Prefixes are
    written before the prompt with one space. One value per completion token, EOS
    included, as the training loop tokenises the response (`completion_token_logprobs`).
    """
    if good_prefix == bad_prefix:
        raise ValueError(f"good_prefix and bad_prefix are the same ({good_prefix!r}), so every token reward is 0; "
                         "pass two prompts that ask for different quality")
    good = completion_token_logprobs(model, tokenizer, [f"{good_prefix} {p}" for p in prompts], responses,
                                     max_completion_length=max_completion_length)
    bad = completion_token_logprobs(model, tokenizer, [f"{bad_prefix} {p}" for p in prompts], responses,
                                     max_completion_length=max_completion_length)
    out = []
    for (ids_g, lp_g), (ids_b, lp_b) in zip(good, bad):
        if ids_g != ids_b:  # the response is tokenised on its own, so the prefix cannot change its tokens
            raise ValueError("the prefixes changed how a response is tokenised; token rewards would not align")
        out.append(lp_g - lp_b)
    return out


def add_contrastive_token_rewards(rows: Sequence[dict], model, tokenizer, good_prefix: str, bad_prefix: str,
                                  max_completion_length: int | None = 64) -> list[dict]:
    """Return pair rows with "chosen_token_rewards"/"rejected_token_rewards" from `contrastive_token_rewards`.

    Computed once, before training, by `model` (T-REG: the reference model itself);
    the rows then train `--method t_reg` through the loop.
    """
    prompts = [r["prompt"] for r in rows for _ in range(2)]
    texts = [t for r in rows for t in (r["chosen"], r["rejected"])]
    rewards = contrastive_token_rewards(model, tokenizer, prompts, texts, good_prefix, bad_prefix,
                                        max_completion_length=max_completion_length)
    return [{**r, "chosen_token_rewards": rewards[2 * i].tolist(), "rejected_token_rewards": rewards[2 * i + 1].tolist()}
            for i, r in enumerate(rows)]
