"""Pedagogical alignment on the tutor world: metrics, the preference data, a simulated student.

* `pedagogy_metrics` reads a batch of tutor turns with the world's rubric
  (eq-tutor-rubric, `alignlib.worlds.tutor`): gold pedagogical reward,
  answer-leak rate, step correctness, scaffold rate, fluency.
* `evaluate_tutor` samples a policy on the eval questions and returns those metrics;
  `scaffold_preference` is a likelihood test in the spirit of the paper's perplexity
  metrics (is the scaffold likelier than the answer-style turn?), which needs no sampling.
* `pedagogical_pairs` builds the preference data the way Sonkar et al. (2024) build
  their reward data set: synthetic, no annotator; for each student question the
  preferred turn scaffolds (a step and a question back, or a hint) and the
  rejected turn gives the answer away (a direct answer or a full worked
  solution). `scaffold_demonstrations` keeps the preferred turns: the data of
  the SFT baseline, so that SFT and the preference methods see the same
  good responses.
* `SimulatedStudent` gives the two kinds of feedback of RLHS (Liang et al.,
  2025): *foresight* (the student rates the turn right away, and likes being
  handed the answer) and *hindsight* (the student's simulated outcome on a
  fresh problem of the same kind, which only practice with correct steps
  improves).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .worlds.tutor import (
    STYLES,
    Assessment,
    TutorWorld,
    parse_problem,
    render,
    style_of,
)


# ------------------------------------------------------------------ metrics
@dataclass
class PedagogyMetrics:
    gold_reward: float      # mean rubric score (eq-tutor-rubric)
    leak_rate: float        # fraction of turns that state the final answer
    step_correctness: float  # correct step statements / all step statements (nan when none was made)
    steps_per_turn: float   # step statements per turn
    scaffold_rate: float    # fraction of turns that show a step and hand the next one to the student, no leak
    grammatical: float      # fraction of turns the grammar accepts in full
    n: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def pedagogy_metrics(world: TutorWorld, prompts: Sequence[str], responses: Sequence[str]) -> PedagogyMetrics:
    """Return the rubric's metrics over (prompt, response) pairs; a ValueError on mismatched or empty input."""
    if not prompts or len(prompts) != len(responses):
        raise ValueError(f"need matching, non-empty prompts and responses; got {len(prompts)} and {len(responses)}")
    parts: list[Assessment] = [world.assess(p, r) for p, r in zip(prompts, responses)]
    steps = sum(a.steps for a in parts)
    return PedagogyMetrics(
        gold_reward=statistics.fmean(a.reward for a in parts),
        leak_rate=statistics.fmean(a.leak for a in parts),
        step_correctness=sum(a.correct_steps for a in parts) / steps if steps else float("nan"),
        steps_per_turn=steps / len(parts),
        scaffold_rate=statistics.fmean(a.turn and a.steps > 0 for a in parts),
        grammatical=statistics.fmean(not a.empty and a.ungrammatical == 0 for a in parts),
        n=len(parts),
    )


def evaluate_tutor(policy, tokenizer, world: TutorWorld, prompts: Sequence[str] | None = None,
                   samples_per_prompt: int = 4, seed: int = 0, max_new_tokens: int = 40):
    """Sample `policy` (pure sampling) on the eval questions; return (PedagogyMetrics, prompts, responses)."""
    from .rollout import sample

    prompts = list(prompts if prompts is not None else world.prompts("eval"))
    repeated = [p for p in prompts for _ in range(samples_per_prompt)]
    s = sample(policy, tokenizer, repeated, max_new_tokens=max_new_tokens, seed=seed)
    return pedagogy_metrics(world, repeated, s.texts), repeated, s.texts


def scaffold_preference(model, tokenizer, world: TutorWorld, prompts: Sequence[str] | None = None,
                        rejected_style: str = "direct") -> dict[str, float]:
    """Return the likelihood test behind the perplexity metrics of Sonkar et al. (2024), on the eval questions.

    For each question the model scores two reference turns written by the world:
    the scaffold (`render(problem, "scaffold")`) and the answer-style turn
    (`rejected_style`: "direct" or "solution"). Returns
      accuracy       fraction of questions where log π(scaffold) > log π(answer-style), whole turns
      log_ratio      mean of log π(scaffold) − log π(answer-style) (> 0: the scaffold is the likelier turn)
      ppl_accuracy   the same comparison per token: PPL(scaffold) < PPL(answer-style), PPL = exp(−mean log-prob)
    The per-token form favours long, predictable turns: a scaffold is mostly template
    words, a direct answer is short and its one number is hard, so ppl_accuracy is high
    even for a model that nearly always answers directly. No sampling is involved.
    """
    import torch

    from .data import collate, encode_completion, encode_prompt
    from .logprobs import sequence_logprobs

    if rejected_style not in ("direct", "solution"):
        raise ValueError(f"rejected_style must be 'direct' or 'solution', got {rejected_style!r}")
    prompts = list(prompts if prompts is not None else world.prompts("eval"))
    rows = []
    for p in prompts:
        problem = parse_problem(p)
        for style in ("scaffold", rejected_style):
            rows.append((encode_prompt(tokenizer, p, None), encode_completion(tokenizer, render(problem, style), None)[0]))
    device = next(model.parameters()).device
    with torch.no_grad():
        batch = {k: v.to(device) for k, v in collate(rows, tokenizer.pad_token_id).items()}
        total, _, mask = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    total = total.float().cpu()
    mean_lp = total / mask.sum(-1).cpu()  # log PPL = −mean log-prob
    return {"accuracy": (total[0::2] > total[1::2]).float().mean().item(),
            "log_ratio": (total[0::2] - total[1::2]).mean().item(),
            "ppl_accuracy": (mean_lp[0::2] > mean_lp[1::2]).float().mean().item()}


# ------------------------------------------------------------------- data
def pedagogical_pairs(world: TutorWorld, n: int, seed: int, hint_fraction: float = 0.2,
                      slip_rate: float = 0.0) -> list[dict]:
    """Return `n` preference rows {prompt, chosen, rejected, chosen_gold, rejected_gold, rejected_style}.

    For each train question (cycled in a seeded order) the chosen turn scaffolds
    (a hint with probability `hint_fraction`, else the worked ones step and a
    question about the tens) and the rejected turn reveals the answer (a direct
    answer or a full worked solution, equally often). `slip_rate` puts one
    arithmetic slip into that fraction of chosen turns, as an imperfect
    generator would. A pair is kept only when the rubric agrees (chosen scores
    higher), so the data set is consistent with the gold judge it is built from.
    """
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    for name, value in (("hint_fraction", hint_fraction), ("slip_rate", slip_rate)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    rng = random.Random(seed)
    prompts = world.prompts("train")
    order = list(range(len(prompts)))
    rng.shuffle(order)
    rows: list[dict] = []
    i = 0
    while len(rows) < n:
        prompt = prompts[order[i % len(order)]]
        i += 1
        problem = parse_problem(prompt)
        style = "hint" if rng.random() < hint_fraction else "scaffold"
        slip = rng.choice(("ones", "carry")) if style == "scaffold" and rng.random() < slip_rate else None
        chosen = render(problem, style, slip)
        bad_style = rng.choice(("direct", "solution"))
        rejected = render(problem, bad_style)
        gc, gr = world.gold_reward([prompt, prompt], [chosen, rejected])
        if gc <= gr:
            continue
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "chosen_gold": gc,
                     "rejected_gold": gr, "rejected_style": bad_style})
    return rows


def scaffold_demonstrations(pairs: Sequence[dict]) -> list[dict]:
    """Return SFT rows {prompt, completion} from the chosen turns of preference rows (the SFT baseline's data)."""
    if not pairs:
        raise ValueError("no preference rows given; build them with pedagogical_pairs(world, n, seed)")
    missing = [k for k in ("prompt", "chosen") if k not in pairs[0]]
    if missing:
        raise ValueError(f"preference rows need 'prompt' and 'chosen' columns; missing {missing}")
    return [{"prompt": r["prompt"], "completion": r["chosen"]} for r in pairs]


def style_counts(world: TutorWorld, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, float]:
    """Return the fraction of turns in each coarse style (leak, scaffold, hint, steps, other)."""
    labels = [style_of(parse_problem(p), r) for p, r in zip(prompts, responses)]
    return {k: labels.count(k) / len(labels) for k in ("leak", "scaffold", "hint", "steps", "other")}


# ------------------------------------------------------ simulated student (RLHS)
class SimulatedStudent:
    """A student who rates a tutor turn, with foresight or in hindsight (RLHS).

    foresight(x, y) = 1·[y states an answer] + 0.1·(steps shown) − 0.5·u
        the student's rating right after the turn: a stated answer feels like the
        most help (the homework is done), and the student cannot check arithmetic.
    hindsight(x, y) = outcome − 0.5·u, outcome ~ Bernoulli(p_learn(x, y))
        the rating after the student, alone, tries a fresh problem of the same
        kind (simulated): p_learn = 0.1 + 0.25·ones + 0.15·carry + 0.2·tens
        + 0.3·[did the last step themselves] − 0.3·(wrong statements), clipped to [0, 1].
        A revealed answer leaves no step to practise.

    u is the fraction of sentences the grammar rejects. Both are callables
    f(prompts, responses) -> scores, the reward interface of online methods;
    hindsight draws its outcomes from a seeded stream, so a run is reproducible.
    """

    def __init__(self, world: TutorWorld, seed: int = 0):
        self.world = world
        self.rng = random.Random(seed)

    @staticmethod
    def p_learn(a: Assessment) -> float:
        if a.empty:
            return 0.0
        p = 0.1 + 0.25 * a.ones + 0.15 * a.carry + 0.2 * a.tens + 0.3 * a.turn - 0.3 * a.wrong
        return min(1.0, max(0.0, p))

    def foresight(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        out = []
        for p, r in zip(prompts, responses):
            a = self.world.assess(p, r)
            says_answer = any(w[-4:-2] == ["answer", "is"] for w in _sentences(r)) or a.leak
            out.append(-1.0 if a.empty else 1.0 * says_answer + 0.1 * a.steps - 0.5 * a.ungrammatical)
        return out

    def hindsight(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        out = []
        for p, r in zip(prompts, responses):
            a = self.world.assess(p, r)
            outcome = float(self.rng.random() < self.p_learn(a))
            out.append(-1.0 if a.empty else outcome - 0.5 * a.ungrammatical)
        return out


def _sentences(response: str) -> list[list[str]]:
    from .worlds.tutor import split_sentences

    return split_sentences(response)


__all__ = [
    "STYLES",
    "PedagogyMetrics",
    "SimulatedStudent",
    "evaluate_tutor",
    "pedagogical_pairs",
    "pedagogy_metrics",
    "scaffold_demonstrations",
    "scaffold_preference",
    "style_counts",
]
