"""Learning from language feedback: ILF, CUT data, SFT on approved samples, and a feedback-generating reward model.

Everything here *prepares data* or *scores text*; all training goes through
`alignlib.loop.train` (methods "sft", "cut", "dpo"), so no method has a trainer
of its own. A world that gives language feedback implements `World.feedback`;
the helpers that read the feedback back (`parse_feedback`, `marked_words`) are
those of the constrained-writing world.

    ilf            Imitation learning from Language Feedback (Scheurer et al.): draft → critique →
                   N refinements conditioned on (prompt, draft, critique) → keep the refinement that
                   best incorporates the critique → SFT on it → repeat with the new policy.
    cut_rows       CUT data (Xu et al.): each response with the tokens its judgement marks.
    approved_rows  "SFT on feedback": fine-tune only on the responses the critic approves.
    FeedbackRewardModel
                   a seq2seq reward model (Zhou et al.): an LM trained by sequence MLE to *write*
                   the critique of (prompt, response); its reward is log p(approving critique).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import collate, encode_completion, encode_prompt
from .logprobs import sequence_logprobs
from .rollout import sample
from .worlds.constrained import (
    CONSTRAINTS,
    OK_FEEDBACK,
    critique_prompt,
    hindsight_prompt,
    parse_feedback,
    refinement_prompt,
)


# ------------------------------------------------------------ selection
def incorporation_score(feedback: str, refinement: str, is_grammatical: bool) -> float:
    """Return the fraction of the critique's points that `refinement` has addressed (−1 if ungrammatical).

    The analogue of ILF's selection model, which asks an instruction-following LM
    "does the new output incorporate the feedback?". Like that model, it reads only the
    critique and the refinement, not the task: a point "you did not use W" is addressed
    when W occurs, "too long : at most K words" when there are at most K words, "W is off
    topic" when W is gone. It therefore cannot see a violation the critique did not name
    (a new off-topic noun, a required word dropped): it is *not* the gold reward.
    Raises ValueError for a critique that refers to no constraint.
    """
    points = parse_feedback(feedback)
    if not is_grammatical:
        return -1.0
    words = refinement.split()
    body = words[:-1] if words and words[-1] == "." else words
    if "ok" in points:
        return 1.0
    checks = []
    if "word" in points:
        checks.append(points["word"] in body)
    if "length" in points:
        checks.append(len(body) <= int(points["length"]))
    if "topic" in points:
        checks.extend(noun not in body for noun in points["topic"].split())
    if "grammar" in points:
        checks.append(True)  # grammatical now
    return sum(checks) / len(checks)


def select_refinement(feedback: str, refinements: Sequence[str], is_grammatical: Callable[[str], bool]) -> tuple[int, list[float]]:
    """Return (index of the refinement that best incorporates `feedback`, every refinement's score).

    Ties go to the first. Raises ValueError when there is no refinement, and when the
    critique refers to no constraint (through `incorporation_score`).
    """
    if not refinements:
        raise ValueError("no refinements to select from; sample at least one refinement per draft (n_refinements ≥ 1)")
    scores = [incorporation_score(feedback, r, is_grammatical(r)) for r in refinements]
    best = max(range(len(scores)), key=lambda j: scores[j])
    return best, scores


# ------------------------------------------------------------------ ILF
def simulated_refiner(world, fix_rate: float = 0.8) -> Callable:
    """Return refine(prompts, drafts, critiques, seed) -> refinements drawn from the world's own editor.

    `world.refinement` fixes each problem a critique names with probability `fix_rate`
    (a minimal edit of the draft). It stands in for a large model that can incorporate
    feedback, which the pocket model is too small to be (see the chapter); selection
    among N such refinements still matters, since each misses a named problem 20% of
    the time and can break an unnamed constraint.
    """
    import random

    def refine(prompts, drafts, critiques, seed):
        rng = random.Random(seed)
        return [world.refinement(rng, p, d, f, fix_rate) for p, d, f in zip(prompts, drafts, critiques)]

    return refine


@dataclass
class ILFRound:
    drafts: int  # feedback labels spent this round (one critique per draft)
    approved: int  # drafts the critic approved (kept as their own target, not refined)
    refined: int  # drafts replaced by a selected refinement
    skipped: int  # drafts whose refinements were all empty or ungrammatical (no target)
    draft_gold: float  # mean gold reward of the drafts
    target_gold: float  # mean gold reward of the SFT targets
    rows: list[dict] = field(repr=False, default_factory=list)


def ilf_targets(policy, refiner, tokenizer, world, prompts: Sequence[str], n_refinements: int, seed: int,
                max_new_tokens: int = 16, selector: Callable | None = None) -> ILFRound:
    """One ILF data round: draft with `policy`, critique with the world's critic, refine with `refiner`, select.

    Returns the SFT rows {prompt, completion} and the counts. A draft the critic
    approves is its own target (there is nothing to incorporate); a draft whose
    refinements are all empty or ungrammatical is skipped and counted.
    `selector(feedback, refinements) -> (index, scores)` defaults to `select_refinement`.
    """
    if n_refinements < 1:
        raise ValueError(f"n_refinements must be ≥ 1, got {n_refinements}")
    prompts = list(prompts)
    drafts = sample(policy, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed).texts
    critiques = [world.feedback(p, d) for p, d in zip(prompts, drafts)]
    todo = [i for i, f in enumerate(critiques) if "ok" not in parse_feedback(f)]
    contexts = [refinement_prompt(prompts[i], drafts[i], critiques[i]) for i in todo for _ in range(n_refinements)]
    if not contexts:
        refs = []
    elif isinstance(refiner, torch.nn.Module):
        refs = sample(refiner, tokenizer, contexts, max_new_tokens=max_new_tokens, seed=seed + 1).texts
    else:  # a refine(prompts, drafts, critiques, seed) function, e.g. `simulated_refiner`
        refs = list(refiner([prompts[i] for i in todo for _ in range(n_refinements)],
                            [drafts[i] for i in todo for _ in range(n_refinements)],
                            [critiques[i] for i in todo for _ in range(n_refinements)], seed + 1))
    if selector is None:
        def selector(f, rs):
            return select_refinement(f, rs, lambda r: bool(r.strip()) and world.is_grammatical("", r))
    targets: dict[int, str] = {i: drafts[i] for i in range(len(prompts)) if i not in set(todo)}
    skipped = 0
    for k, i in enumerate(todo):
        block = refs[k * n_refinements:(k + 1) * n_refinements]
        best, scores = selector(critiques[i], block)
        if scores[best] < 0 or not block[best].strip():
            skipped += 1
            continue
        targets[i] = block[best]
    order = sorted(targets)
    rows = [{"prompt": prompts[i], "completion": targets[i]} for i in order]
    gold_d = world.gold_reward(prompts, drafts)
    gold_t = world.gold_reward([prompts[i] for i in order], [targets[i] for i in order]) if order else [float("nan")]
    return ILFRound(len(prompts), len(prompts) - len(todo), len(order) - (len(prompts) - len(todo)), skipped,
                    sum(gold_d) / len(gold_d), sum(gold_t) / len(gold_t), rows)


def ilf(policy, refiner, tokenizer, world, train_config_fn: Callable[[int, int], object], labels: int, rounds: int,
        n_refinements: int, seed: int, prompt_pool: Sequence[str] | None = None,
        max_new_tokens: int = 16) -> tuple[torch.nn.Module, list[ILFRound]]:
    """Run `rounds` of ILF spending `labels` critiques in all; return the final policy and each round's record.

    Each round drafts `labels // rounds` train prompts with the *current* policy and fine-tunes
    it (method "sft" through `alignlib.loop.train`) on the round's targets together with
    the earlier rounds' (the data set grows). `train_config_fn(round, n_rows)` returns the
    round's `TrainConfig` (its method must be "sft"). The input policy is not modified.
    """
    from .loop import train
    from .rollout import prompts_for

    if rounds < 1 or labels < rounds:
        raise ValueError(f"need rounds ≥ 1 and labels ≥ rounds, got labels={labels}, rounds={rounds}")
    pool = list(prompt_pool) if prompt_pool is not None else prompts_for(world, labels)
    per_round = labels // rounds
    policy = copy.deepcopy(policy)
    rows: list[dict] = []
    records = []
    for r in range(rounds):
        prompts = [pool[(r * per_round + j) % len(pool)] for j in range(per_round)]
        rec = ilf_targets(policy, refiner, tokenizer, world, prompts, n_refinements, seed=seed * 1000 + r,
                          max_new_tokens=max_new_tokens)
        records.append(rec)
        rows += rec.rows
        if not rows:
            continue
        cfg = train_config_fn(r, len(rows))
        if cfg.method != "sft":
            raise ValueError(f"ILF fine-tunes on the selected refinements with method 'sft', got {cfg.method!r}")
        policy = train(cfg, model=policy, tokenizer=tokenizer, dataset=rows).model
    return policy, records


# ------------------------------------------------------------- CUT data
def cut_rows(world, prompts: Sequence[str], responses: Sequence[str],
             hindsight: bool = False) -> tuple[list[dict], dict[str, int]]:
    """Return "cut" rows {prompt, completion, unlikely} with the words the world's critic marks, and counts.

    Approved responses carry no marks (plain likelihood). A rejected response gives
    CUT's two branches: the *negative* row (plain prompt x, unlikelihood on the marked
    words, likelihood on the rest) and, with `hindsight`, the *positive* row
    (x⁺ = `hindsight_prompt(x, critique)`, likelihood on every token): the response is
    a good answer to "write something that gets this critique". The positive branch is
    off by default: the pocket model barely tells the two contexts apart, so it acts as
    likelihood on the rejected response (the chapter measures this). Empty responses, and
    responses whose every word is marked (nothing left to learn from), are skipped
    and counted.
    """
    rows, counts = [], {"approved": 0, "marked": 0, "hindsight": 0, "skipped_empty": 0, "skipped_all_marked": 0}
    for p, y in zip(prompts, responses):
        if not y.strip():
            counts["skipped_empty"] += 1
            continue
        marks = world.marked_words(p, y)
        if len(marks) == len(y.split()):
            counts["skipped_all_marked"] += 1
            continue
        f = world.feedback(p, y)
        counts["approved" if f == OK_FEEDBACK else "marked"] += 1
        rows.append({"prompt": p, "completion": y, "unlikely": marks})
        if hindsight and f != OK_FEEDBACK:
            counts["hindsight"] += 1
            rows.append({"prompt": hindsight_prompt(p, f), "completion": y, "unlikely": []})
    return rows, counts


@torch.no_grad()
def _completion_token_logps(model, tokenizer, contexts: Sequence[str], completions: Sequence[str]):
    rows = [(encode_prompt(tokenizer, c, None), encode_completion(tokenizer, y, None)[0])
            for c, y in zip(contexts, completions)]
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate(rows, tokenizer.pad_token_id).items()}
    seq, token_lp, _ = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"],
                                            batch["completion_mask"])
    # keep only the completion tokens, left-aligned: [N, max completion length]
    out = torch.zeros(len(rows), max(len(c) for _, c in rows))
    for i, (p, c) in enumerate(rows):
        out[i, :len(c)] = token_lp[i, len(p) - 1:len(p) - 1 + len(c)].float().cpu()
    return seq.float().cpu(), out, [len(c) for _, c in rows]


def hindsight_cut_rows(model, tokenizer, world, prompts: Sequence[str], responses: Sequence[str],
                       threshold: float = 1.1) -> tuple[list[dict], dict[str, int]]:
    """Return "cut" rows whose marks come from CUT's hindsight ratio under `model` (eq-cut-hindsight), and counts.

    For a response the critic rejects, word i is marked when one of its tokens has
    p(y_t | x, critique) / p(y_t | x) > `threshold` (`losses.feedback.hindsight_flags`),
    the context x⁺ being `hindsight_prompt(x, critique)`. Approved responses carry no
    marks. Responses that are empty or fully marked are skipped and counted. Needs a
    word-level tokenizer (one token per word), which the pocket models have.
    """
    from .losses.feedback import hindsight_flags

    rows, counts = [], {"approved": 0, "marked": 0, "unmarked_negative": 0, "skipped_empty": 0,
                        "skipped_all_marked": 0}
    keep = [(p, y) for p, y in zip(prompts, responses) if y.strip()]
    counts["skipped_empty"] = len(prompts) - len(keep)
    for start in range(0, len(keep), 128):
        chunk = keep[start:start + 128]
        ps, ys = [p for p, _ in chunk], [y for _, y in chunk]
        fbs = [world.feedback(p, y) for p, y in chunk]
        _, lp_plain, lengths = _completion_token_logps(model, tokenizer, ps, ys)
        _, lp_hind, _ = _completion_token_logps(model, tokenizer, [hindsight_prompt(p, f) for p, f in zip(ps, fbs)], ys)
        mask = torch.zeros_like(lp_plain)
        for i, n in enumerate(lengths):
            mask[i, :n - 1] = 1  # words only: the EOS (last token) is never marked
        flags = hindsight_flags(lp_hind, lp_plain, mask, threshold)
        for i, (p, y) in enumerate(chunk):
            if fbs[i] == OK_FEEDBACK:
                counts["approved"] += 1
                rows.append({"prompt": p, "completion": y, "unlikely": []})
                continue
            marks = [j for j in range(len(y.split())) if j < flags.shape[1] and flags[i, j] > 0]
            if len(marks) == len(y.split()):
                counts["skipped_all_marked"] += 1
                continue
            counts["marked" if marks else "unmarked_negative"] += 1
            rows.append({"prompt": p, "completion": y, "unlikely": marks})
    return rows, counts


def approved_rows(world, prompts: Sequence[str], responses: Sequence[str]) -> list[dict]:
    """Return SFT rows of the responses the critic approves (feedback used only as a yes/no filter)."""
    return [{"prompt": p, "completion": y} for p, y in zip(prompts, responses)
            if y.strip() and world.feedback(p, y) == OK_FEEDBACK]


# ------------------------------------------------- seq2seq reward model
def critic_rows(world, prompts: Sequence[str], responses: Sequence[str]) -> list[dict]:
    """Return SFT rows (critique_prompt(x, y) → the gold critique of y) that teach a model to write feedback."""
    return [{"prompt": critique_prompt(p, y), "completion": world.feedback(p, y)}
            for p, y in zip(prompts, responses) if y.strip()]


class FeedbackRewardModel:
    """A reward read from a model that writes critiques (a sequence-to-sequence reward model).

    The critic is a causal LM fine-tuned (method "sft") on `critic_rows`. Its sequence
    reward is r(x, y) = log p_critic(OK | x, y), the log-probability that it would write
    the approving critique "all constraints met ."; its token-level view,
    `token_rewards`, spreads that log-probability over the critique's tokens.
    `critique` decodes the critique greedily, so the reward model can also *say* why.
    """

    def __init__(self, model, tokenizer, ok_feedback: str = OK_FEEDBACK, batch_size: int = 256):
        self.model, self.tokenizer, self.ok, self.batch_size = model, tokenizer, ok_feedback, batch_size

    @torch.no_grad()
    def token_rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Return log p(OK_t | x, y, OK_<t) for each token of the approving critique: [N, len(OK)+1]."""
        out = []
        for s in range(0, len(prompts), self.batch_size):
            ctx = [critique_prompt(p, y) for p, y in zip(prompts[s:s + self.batch_size], responses[s:s + self.batch_size])]
            _, tok, _ = _completion_token_logps(self.model, self.tokenizer, ctx, [self.ok] * len(ctx))
            out.append(tok)
        return torch.cat(out)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return self.token_rewards(list(prompts), list(responses)).sum(-1).tolist()

    @torch.no_grad()
    def critique(self, prompts: Sequence[str], responses: Sequence[str], max_new_tokens: int = 24) -> list[str]:
        """Return the critic's greedy critique of each (prompt, response)."""
        ctx = [critique_prompt(p, y) for p, y in zip(prompts, responses)]
        s = sample(self.model, self.tokenizer, ctx, max_new_tokens=max_new_tokens, temperature=1e-4, seed=0)
        return s.texts


def violations_named(feedback: str) -> set[str]:
    """Return the constraints a critique says are violated ({"word", "length", "topic"}; all three if ungrammatical)."""
    points = parse_feedback(feedback)
    if "grammar" in points:
        return set(CONSTRAINTS)
    return {c for c in CONSTRAINTS if c in points}


# ------------------------------------------------ one recipe, four methods
@dataclass
class FeedbackRecipe:
    """Training settings shared by the chapter's comparison (every method trains through `alignlib.loop.train`)."""

    learning_rate: float = 2e-4
    batch_size: int = 16
    epochs: float = 4.0  # passes over the method's rows (steps = epochs · rows / batch_size, at least min_steps)
    min_steps: int = 10
    max_steps: int | None = None  # cap (the smoke run)
    ilf_rounds: int = 2
    n_refinements: int = 8
    beta: float = 0.1  # DPO
    max_new_tokens: int = 16

    def steps(self, rows: int) -> int:
        s = max(self.min_steps, round(self.epochs * rows / self.batch_size))
        return min(s, self.max_steps) if self.max_steps else s


FEEDBACK_METHODS = ("ilf", "ilf_lm", "cut", "sft_on_feedback", "dpo")


def train_with_feedback(method: str, model, tokenizer, world, labels: int, seed: int, output_dir: str | Path,
                        recipe: FeedbackRecipe | None = None, refiner=None) -> tuple[torch.nn.Module, dict]:
    """Spend `labels` judgements of the gold critic (or oracle) on `method`, starting from `model`; return (policy, info).

    ilf              labels = critiques of drafts (`ilf`, `recipe.ilf_rounds` rounds), refinements by the
                     world's simulated refiner (`simulated_refiner`)
    ilf_lm           the same with refinements sampled from the language model `refiner`
    cut              labels = critiques of one sample per train prompt → "cut" rows (`cut_rows`)
    sft_on_feedback  labels = critiques used as a yes/no filter → SFT on the approved samples
    dpo              labels = pairwise comparisons by the gold oracle of two samples per prompt
    The input model is not modified.
    """
    from .config import TrainConfig
    from .loop import train
    from .rollout import preference_pairs, prompts_for

    if method not in FEEDBACK_METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {FEEDBACK_METHODS}")
    recipe = recipe or FeedbackRecipe()
    out = Path(output_dir)

    def config(name: str, rows: int, **kw):
        return TrainConfig(method=name, world=world.name, max_steps=recipe.steps(rows), learning_rate=recipe.learning_rate,
                           per_device_train_batch_size=recipe.batch_size, seed=seed, output_dir=str(out / name),
                           save_steps=0, progress=False, logging_steps=0, overwrite_output_dir=True, **kw)

    rng_prompts = prompts_for(world, len(world.prompts("train")))
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(rng_prompts), generator=g).tolist()
    prompts = [rng_prompts[perm[i % len(perm)]] for i in range(labels)]
    if method in ("ilf", "ilf_lm"):
        if method == "ilf_lm" and refiner is None:
            raise ValueError("ilf_lm needs a refiner model that conditions on (prompt, draft, feedback)")
        refine = simulated_refiner(world) if method == "ilf" else refiner

        def ilf_config(r, n):
            return TrainConfig(method="sft", world=world.name, max_steps=recipe.steps(n),
                               learning_rate=recipe.learning_rate, per_device_train_batch_size=recipe.batch_size,
                               seed=seed, output_dir=str(out / f"ilf-{r}"), save_steps=0, progress=False,
                               logging_steps=0, overwrite_output_dir=True)

        policy, records = ilf(model, refine, tokenizer, world, ilf_config, labels, recipe.ilf_rounds,
                              recipe.n_refinements, seed, prompt_pool=prompts, max_new_tokens=recipe.max_new_tokens)
        return policy, {"rows": sum(len(r.rows) for r in records), "rounds": records}
    if method == "dpo":
        rows = preference_pairs(model, tokenizer, world, prompts, seed=seed, max_new_tokens=recipe.max_new_tokens)
        rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]
        cfg = config("dpo", len(rows), beta=recipe.beta)
        return train(cfg, model=copy.deepcopy(model), tokenizer=tokenizer, dataset=rows).model, {"rows": len(rows)}
    samples = sample(model, tokenizer, prompts, max_new_tokens=recipe.max_new_tokens, seed=seed).texts
    if method == "cut":
        rows, counts = cut_rows(world, prompts, samples)
        run = train(config("cut", len(rows)), model=copy.deepcopy(model), tokenizer=tokenizer, dataset=rows)
        return run.model, {"rows": len(rows), **counts}
    rows = approved_rows(world, prompts, samples)
    if not rows:
        return copy.deepcopy(model), {"rows": 0}
    run = train(config("sft", len(rows)), model=copy.deepcopy(model), tokenizer=tokenizer, dataset=rows)
    return run.model, {"rows": len(rows)}


def constraint_satisfaction(policy, tokenizer, world, samples_per_prompt: int = 8, seed: int = 0,
                            max_new_tokens: int = 16) -> dict[str, float]:
    """Return the gold view of a policy on the eval prompts: all-constraints rate, mean gold reward, per-constraint rates."""
    prompts = [p for p in world.prompts("eval") for _ in range(samples_per_prompt)]
    texts = sample(policy, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed).texts
    checks = [world.check(p, y) for p, y in zip(prompts, texts)]
    n = len(prompts)
    out = {"all": sum(all(c[k] for k in ("grammatical",) + CONSTRAINTS) for c in checks) / n,
           "gold": sum(world.gold_reward(prompts, texts)) / n, "n": n}
    for k in ("grammatical",) + CONSTRAINTS:
        out[k] = sum(c[k] for c in checks) / n
    return out
