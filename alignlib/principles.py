"""Principle-following reward models (SALMON, Sun et al. 2024), on the reviews world.

SALMON trains ONE reward model whose input holds written principles next to the prompt,
r_φ(x, y; p) (eq-principle-reward in chapter 2), on synthetic preferences: an AI judge
compares two answers *according to the principle shown*. At RL or best-of-n time the
principle is just text, so changing it changes what is rewarded, with no new preference data.

Here everything is written in the reviews world's own words, because the pocket tokenizer
knows nothing else (an unknown word becomes `<unk>`, and every unknown principle would read
the same):

* a principle is a short prompt prefix ("good :", "bad :", "short :"), and several
  principles are written one after the other ("good : short :");
* each principle has a programmatic judge, the stand-in for SALMON's AI labeller, that reads
  one component of the world's gold `score` (sentiment) or the answer's length;
* `principle_pairs` turns pairs of SFT answers into principle-labelled rows for
  `train(TrainConfig(method="reward"), dataset=rows)`, the book's one training loop;
* `principled_reward(reward_model, principle)` is a `reward_fn(prompts, responses)` for
  best-of-n or online training that writes the principle in front of every prompt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


@dataclass(frozen=True)
class Principle:
    """A written principle: the prefix a reward model reads, and the judge that labels pairs by it.

    judge(world, prompt, response) -> float: how well `response` follows the principle
    (higher is better); the labeller prefers the answer with the higher value.
    """

    name: str
    prefix: str
    description: str
    judge: Callable[[object, str, str], float]


def _sentiment(world, prompt: str, response: str) -> float:
    return world.score(prompt, response)["sentiment"]


def _negative_sentiment(world, prompt: str, response: str) -> float:
    return -world.score(prompt, response)["sentiment"]


def _brevity(world, prompt: str, response: str) -> float:
    return -float(len(response.split()))


PRINCIPLES: dict[str, Principle] = {
    p.name: p
    for p in (
        Principle("good", "good :", "prefer the more positive review (higher gold sentiment)", _sentiment),
        Principle("bad", "bad :", "prefer the more negative review (lower gold sentiment)", _negative_sentiment),
        Principle("short", "short :", "prefer the shorter review (fewer words)", _brevity),
    )
}


def get_principle(name: str) -> Principle:
    """Return the principle called `name`; a clear error names the known ones."""
    if not isinstance(name, str) or name not in PRINCIPLES:
        raise ValueError(f"unknown principle {name!r}; use one of {sorted(PRINCIPLES)} "
                         f"(or add a Principle to alignlib.principles.PRINCIPLES)")
    return PRINCIPLES[name]


def _names(principle: str | Sequence[str]) -> list[str]:
    names = [principle] if isinstance(principle, str) else list(principle)
    if not names:
        raise ValueError("give at least one principle name, e.g. 'good' or ['good', 'short']")
    for n in names:
        get_principle(n)
    if len(set(names)) != len(names):
        raise ValueError(f"principle names repeat in {names}; give each principle once")
    return names


def principle_prefix(principle: str | Sequence[str]) -> str:
    """Return the text written before the prompt: one principle ("good :") or several ("good : short :")."""
    return " ".join(get_principle(n).prefix for n in _names(principle))


def principle_prompt(principle: str | Sequence[str], prompt: str) -> str:
    """Return `prompt` with the principle(s) written in front of it, as the reward model reads it."""
    if not isinstance(prompt, str):
        raise ValueError(f"principle prompts are plain text; got {type(prompt).__name__} (a chat prompt?)")
    return f"{principle_prefix(principle)} {prompt}"


def judge(world, principle: str, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Return the principle's judge value of each (prompt, response): higher follows the principle better."""
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    p = get_principle(principle)
    return [float(p.judge(world, x, y)) for x, y in zip(prompts, responses)]


def principle_pairs(world, pairs: Sequence[dict], principles: Sequence[str], assign: str = "cycle",
                    seed: int = 0) -> list[dict]:
    """Return principle-labelled preference rows for the reward loop, from pairs of answers.

    pairs: rows with "prompt" and two answers in "chosen" and "rejected" (e.g. from
    `rollout.preference_pairs`); their order is ignored, only the two texts are used.
    assign="cycle" judges each pair under one principle (shuffled with `seed`, balanced
    across principles), as SALMON's labeller judges each sampled pair once; assign="all"
    judges every pair under every principle.

    Each row: prompt (the principle written in front of the question), chosen and rejected as
    the principle's judge orders them, question, principle, chosen_judge / rejected_judge
    (judge values) and chosen_gold / rejected_gold (the world's gold reward). Pairs the judge
    ties (same sentiment, same length) carry no preference under that principle and are dropped.
    """
    if assign not in ("cycle", "all"):
        raise ValueError(f"assign must be 'cycle' or 'all', got {assign!r}")
    names = _names(principles)
    for i, row in enumerate(pairs):
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
        if missing:
            raise ValueError(f"pair {i} lacks {missing}; pass rows with prompt, chosen and rejected answers")
    if assign == "all":
        jobs = [(row, n) for row in pairs for n in names]
    else:
        order = [names[i % len(names)] for i in range(len(pairs))]
        random.Random(seed).shuffle(order)
        jobs = list(zip(pairs, order))
    questions = [row["prompt"] for row, _ in jobs]
    a, b = [row["chosen"] for row, _ in jobs], [row["rejected"] for row, _ in jobs]
    gold_a, gold_b = world.gold_reward(questions, a), world.gold_reward(questions, b)
    rows = []
    for (row, name), q, ya, yb, ga, gb in zip(jobs, questions, a, b, gold_a, gold_b):
        ja, jb = judge(world, name, [q, q], [ya, yb])
        if ja == jb or ya == yb:
            continue
        if jb > ja:
            ya, yb, ja, jb, ga, gb = yb, ya, jb, ja, gb, ga
        rows.append({"prompt": principle_prompt(name, q), "chosen": ya, "rejected": yb, "question": q,
                     "principle": name, "chosen_judge": ja, "rejected_judge": jb,
                     "chosen_gold": ga, "rejected_gold": gb})
    return rows


def without_principles(rows: Sequence[dict]) -> list[dict]:
    """Return the same rows with the principle removed from the prompt (the control's training data)."""
    if any("question" not in r for r in rows):
        raise ValueError("rows lack 'question': pass rows made by principle_pairs")
    return [dict(r, prompt=r["question"]) for r in rows]


def check_principle_tokens(tokenizer, principle: str | Sequence[str]) -> None:
    """Raise ValueError if `tokenizer` turns a word of the principle into its unknown token."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return
    text = principle_prefix(principle)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if unk in ids:
        unknown = [w for w in text.split() if unk in tokenizer(w, add_special_tokens=False)["input_ids"]]
        raise ValueError(f"the tokenizer does not know the word(s) {unknown} of principle {text!r}: the reward model "
                         "would read them as its unknown token; write principles in the tokenizer's vocabulary")


def principled_reward(reward_model, principle: str | Sequence[str]) -> RewardFn:
    """Return reward_fn(prompts, responses) = reward_model(principle + prompt, response) (eq-principle-reward).

    reward_model: any reward_fn trained on principle-prefixed prompts (e.g. a `RewardModel`);
    principle: a name of `PRINCIPLES` or a list of names (written one after the other, which
    the reward model may never have seen together). The result plugs into `best_of_n` or
    `optimise_against` unchanged.
    """
    names = _names(principle)
    tokenizer = getattr(reward_model, "tokenizer", None)
    if tokenizer is not None:
        check_principle_tokens(tokenizer, names)

    def reward_fn(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        return list(reward_model([principle_prompt(names, p) for p in prompts], responses))

    reward_fn.principle = principle_prefix(names)
    return reward_fn
