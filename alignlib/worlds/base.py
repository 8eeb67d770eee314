"""The `World` interface: prompts, an SFT corpus and programmatic gold judgement.

A world is a synthetic task whose judgement is a program. Everything a chapter
measures (gold reward, win rate against the SFT policy, fluency) comes from
here, so a world never looks at a model: it works on plain strings and can
score the outputs of the pocket model and of a real model alike.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


def prompt_topic(prompt: str) -> str | None:
    """Return the thing a prompt asks about: the word after the last "the" (None if there is none)."""
    words = prompt.split()
    for i in range(len(words) - 1, -1, -1):
        if words[i] == "the" and i + 1 < len(words):
            return words[i + 1]
    return None


def split_sentences(response: str, end_marks: Sequence[str] = (".", "!")) -> list[list[str]]:
    """Split into sentences (word lists, end mark kept last); a fragment without an end mark gets "<unfinished>"."""
    sentences, current = [], []
    for word in response.split():
        current.append(word)
        if word in end_marks:
            sentences.append(current)
            current = []
    if current:
        sentences.append(current + ["<unfinished>"])
    return sentences


@dataclass
class SentenceFaults:
    """What `count_sentence_faults` found in a response's sentences.

    `parsed` holds, in order, the parse of every sentence that is neither a repeat
    nor rejected by the grammar, each with a flag that is False when the sentence
    names a topic other than the prompt's (those are also counted in `off_topic`).
    """

    sentences: int = 0
    bad: int = 0
    repeated: int = 0
    off_topic: int = 0
    parsed: list[tuple[Any, bool]] = field(default_factory=list)

    @property
    def ungrammatical(self) -> float:
        """Return u, the fraction of sentences the grammar rejects (1 for a response with no sentence)."""
        return self.bad / self.sentences if self.sentences else 1.0


def count_sentence_faults(
    sentences: Sequence[Sequence[str]],
    parse: Callable[[list[str]], Any],
    topic: str | None = None,
    mentioned: Callable[[Any], str | None] | None = None,
) -> SentenceFaults:
    """Count the repeated, ungrammatical and off-topic sentences of a split response.

    A sentence equal to an earlier one is a repeat and is not parsed again; otherwise
    `parse(words)` returning None makes it ungrammatical. When `mentioned` is given, it
    reads the topic a parse names (None: no topic), and a parse naming a topic other
    than `topic` is off topic. The worlds' gold judgements share this walk and differ
    only in what they do with `SentenceFaults.parsed`.
    """
    out = SentenceFaults(sentences=len(sentences))
    seen: set[tuple[str, ...]] = set()
    for words in sentences:
        key = tuple(words)
        if key in seen:
            out.repeated += 1
            continue
        seen.add(key)
        parsed = parse(words)
        if parsed is None:
            out.bad += 1
            continue
        named = mentioned(parsed) if mentioned is not None else None
        on_topic = named is None or named == topic
        out.off_topic += not on_topic
        out.parsed.append((parsed, on_topic))
    return out


@dataclass(frozen=True)
class Example:
    """One supervised example: a prompt and a good completion for it."""

    prompt: str
    completion: str


class World(ABC):
    """Base class of every synthetic world.

    Subclasses implement the abstract methods; the preference oracle and the
    split helpers are shared so that every world labels pairs the same way.
    """

    #: short name used on the command line (`--world NAME`)
    name: str = ""
    #: temperature of the Bradley–Terry gold oracle, P(a ≻ b) = σ((r_a − r_b)/T)
    oracle_temperature: float = 0.25

    # ----------------------------------------------------------------- data
    @abstractmethod
    def prompts(self, split: str) -> list[str]:
        """Return the prompts of `split` ("train" or "eval"); disjoint, fixed."""

    @abstractmethod
    def sft_examples(self, n: int, seed: int) -> list[Example]:
        """Return `n` demonstration (prompt, completion) pairs drawn with `seed`."""

    def pretraining_corpus(self, n: int, seed: int) -> list[str]:
        """Return `n` plain-text documents for language-model pretraining.

        The default uses full demonstrations (prompt followed by completion),
        so the base model learns the world's language before it learns to
        answer prompts.
        """
        return [f"{ex.prompt} {ex.completion}" for ex in self.sft_examples(n, seed)]

    # ------------------------------------------------------- gold judgement
    @abstractmethod
    def gold_reward(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Return the gold reward of each (prompt, response) pair."""

    @abstractmethod
    def is_grammatical(self, prompt: str, response: str) -> bool:
        """Return True when the world's own fluency checker accepts `response`."""

    def preference_probability(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        """Return the gold oracle's P(a ≻ b | x) for each triple.

        Bradley–Terry on the gold reward with temperature `oracle_temperature`.
        Worlds whose preferences are not transitive override this.
        """
        ra = self.gold_reward(prompts, responses_a)
        rb = self.gold_reward(prompts, responses_b)
        t = self.oracle_temperature
        return [1.0 / (1.0 + math.exp(-(a - b) / t)) for a, b in zip(ra, rb)]

    def prefer(
        self,
        prompts: Sequence[str],
        responses_a: Sequence[str],
        responses_b: Sequence[str],
        seed: int,
        label_noise: float = 0.0,
    ) -> list[bool]:
        """Return sampled labels: True where the oracle prefers a over b.

        Each label is a Bernoulli draw from `preference_probability`; then,
        with probability `label_noise`, it is flipped (annotator error).
        """
        if not 0.0 <= label_noise <= 0.5:
            raise ValueError(f"label_noise must be in [0, 0.5], got {label_noise}")
        rng = random.Random(seed)
        labels = []
        for p in self.preference_probability(prompts, responses_a, responses_b):
            label = rng.random() < p
            if rng.random() < label_noise:
                label = not label
            labels.append(label)
        return labels

    def label_accuracy_ceiling(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str],
                               label_noise: float = 0.0) -> float:
        """Return the Bayes ceiling: the best expected accuracy any model can reach on labels from `prefer`.

        A label says "a" with probability q = (1 − ε) p + ε (1 − p), where p is
        `preference_probability` and ε the label noise; no predictor beats
        guessing the likelier label, right with probability max(q, 1 − q). The
        ceiling is the mean of that over the pairs: the oracle's own accuracy
        limit, below 1 because the oracle is stochastic.
        """
        ps = self.preference_probability(prompts, responses_a, responses_b)
        qs = [(1 - label_noise) * p + label_noise * (1 - p) for p in ps]
        return sum(max(q, 1 - q) for q in qs) / len(qs)

    def gold_verdict(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> list[float]:
        """Return 1 where gold prefers a, 0 where it prefers b, 0.5 on a tie (no sampling)."""
        ra = self.gold_reward(prompts, responses_a)
        rb = self.gold_reward(prompts, responses_b)
        return [1.0 if a > b else 0.0 if a < b else 0.5 for a, b in zip(ra, rb)]

    # ---------------------------------------------------- language feedback
    def feedback(self, prompt: str, response: str) -> str:
        """Return one sentence of natural-language critique of `response`.

        Worlds used by the language-feedback chapter implement this.
        """
        raise NotImplementedError(f"world {self.name!r} gives no language feedback")


def world_text_prompt(prompt):
    """Return the world's own prompt text inside a rendered conversational prompt (else `prompt` unchanged).

    A chat template's rendering (`alignlib.data.RenderedPrompt`) wraps the world's
    question in markers and maybe a system message; the world's programs parse only
    their own text, which is the content of the last user message.
    """
    messages = getattr(prompt, "messages", None)
    if not isinstance(prompt, str) or not messages:
        return prompt
    users = [m["content"] for m in messages if m.get("role") == "user"]
    return users[-1] if users else prompt


class ChatPromptJudge:
    """A world whose every method reads rendered conversational prompts as the world's text prompts inside them.

    Wrap a world with it wherever its gold judgement may receive the prompts of a
    conversational run (the policy still answers the rendered prompt): the first
    argument of each method, a prompt or a sequence of prompts, is mapped through
    `world_text_prompt`; text prompts pass unchanged, so wrapping is always safe.
    """

    def __init__(self, world):
        self.world = world.world if isinstance(world, ChatPromptJudge) else world

    def __getattr__(self, name):
        attr = getattr(self.world, name)
        if not callable(attr):
            return attr

        def reading_text_prompts(*args, **kwargs):
            if args:
                first = args[0]
                if isinstance(first, str):
                    first = world_text_prompt(first)
                elif isinstance(first, (list, tuple)):
                    first = [world_text_prompt(p) for p in first]
                args = (first, *args[1:])
            return attr(*args, **kwargs)

        reading_text_prompts.__name__ = name
        return reading_text_prompts

    def __repr__(self) -> str:
        return f"ChatPromptJudge({self.world!r})"
