"""The constrained-writing world: one sentence under three constraints, judged and *critiqued* by a program.

A prompt asks for a sentence about a topic that uses a required word and stays
under a word limit:

    write about the river using fish in at most 6 words :

A response is one sentence of a small grammar,

    the [ADJ] NOUN VERB [PREP the [ADJ] NOUN] .

(3 to 8 words before the final "."). The gold critic checks three constraints:

    word    the required word occurs in the sentence
    length  the sentence has at most k words (the final "." not counted)
    topic   every noun belongs to the prompt's topic

and the gold reward is the fraction of them satisfied, (word + length + topic)/3,
or 0 for a response the grammar rejects. Unlike a scalar reward, the critic
also *writes* what is wrong (`feedback`), in templated language that
`parse_feedback` reads back into the violated constraints:

    you did not use fish .
    too long : at most 6 words .
    car is off topic .
    all constraints met .

`marked_words` says which words of a response the critique points at (the
off-topic nouns, the preposition that made a sentence too long, the slots where
a missing required word belonged): the token-level judgement that CUT's unlikelihood term uses.

The SFT demonstrations satisfy each constraint only part of the time, so the
SFT policy has something to learn. The pretraining corpus also holds
*refinement* documents, `PROMPT draft : Y0 feedback : F refine : Y1`, in which
Y1 fixes most of what F points out, and *hindsight* documents,
`PROMPT feedback : F answer : Y`, in which F is the critique of Y: the base
pocket model can then condition on (prompt, draft, feedback) as ILF needs, and
on (prompt, judgement) as CUT's hindsight ratio needs.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence

from .base import Example, World

TOPICS: dict[str, tuple[str, ...]] = {
    "river": ("fish", "boat", "bridge", "water"),
    "forest": ("tree", "fox", "owl", "path"),
    "city": ("car", "street", "shop", "bus"),
    "sea": ("ship", "wave", "shell", "gull"),
    "farm": ("cow", "barn", "horse", "field"),
    "sky": ("bird", "cloud", "star", "moon"),
}
NOUN_TOPIC = {noun: topic for topic, nouns in TOPICS.items() for noun in nouns}
ADJECTIVES = ("old", "small", "quiet", "green", "bright", "cold")
VERBS = ("sleeps", "waits", "moves", "shines", "rests", "sings")
PREPOSITIONS = ("near", "by", "under", "over", "beside")
LIMITS = (4, 5, 6, 7)
CONSTRAINTS = ("word", "length", "topic")
OK_FEEDBACK = "all constraints met ."
UNGRAMMATICAL_FEEDBACK = "this is not a sentence ."

_PROMPT_RE = re.compile(r"^write about the (\w+) using (\w+) in at most (\d+) words :$")
_FEEDBACK_PATTERNS = (
    ("word", re.compile(r"you did not use (\w+) \.")),
    ("length", re.compile(r"too long : at most (\d+) words \.")),
    ("topic", re.compile(r"(\w+) is off topic \.")),
    ("grammar", re.compile(r"this is not a sentence \.")),
    ("ok", re.compile(r"all constraints met \.")),
)


def parse_prompt(prompt: str) -> tuple[str, str, int]:
    """Return (topic, required word, word limit) of a prompt; ValueError if it is not one of this world's."""
    m = _PROMPT_RE.match(prompt.strip())
    if not m or m.group(1) not in TOPICS:
        raise ValueError(f"not a constrained-writing prompt: {prompt!r}; expected "
                         "'write about the TOPIC using WORD in at most K words :'")
    return m.group(1), m.group(2), int(m.group(3))


def parse_sentence(words: Sequence[str]) -> list[str] | None:
    """Return the nouns of a sentence `the [ADJ] N V [P the [ADJ] N] .`, or None if the grammar rejects it."""
    w = list(words)
    if not w or w[-1] != ".":
        return None
    w = w[:-1]

    def noun_phrase(i: int) -> tuple[str, int] | None:  # the [ADJ] NOUN starting at i
        if i >= len(w) or w[i] != "the":
            return None
        i += 1
        if i < len(w) and w[i] in ADJECTIVES:
            i += 1
        if i < len(w) and w[i] in NOUN_TOPIC:
            return w[i], i + 1
        return None

    first = noun_phrase(0)
    if first is None:
        return None
    noun, i = first
    if i >= len(w) or w[i] not in VERBS:
        return None
    i += 1
    if i == len(w):
        return [noun]
    if w[i] not in PREPOSITIONS:
        return None
    second = noun_phrase(i + 1)
    if second is None or second[1] != len(w):
        return None
    return [noun, second[0]]


def parse_feedback(text: str) -> dict[str, str]:
    """Read a critique back into {constraint: detail}: e.g. {"word": "fish", "length": "6"}.

    Keys are among "word", "length", "topic" (the violated constraints), "grammar"
    (not a sentence) or "ok" (nothing violated). Raises ValueError when the text
    refers to no constraint (or holds text that is no critique), so that a
    malformed critique is never silently read as "no problem".
    """
    rest = " ".join(text.split())
    found: dict[str, str] = {}
    while rest:
        for name, pattern in _FEEDBACK_PATTERNS:
            m = pattern.match(rest)
            if m:
                if name == "topic" and "topic" in found:
                    found["topic"] += " " + m.group(1)
                else:
                    found[name] = m.group(1) if m.groups() else ""
                rest = rest[m.end():].strip()
                break
        else:
            raise ValueError(f"feedback {text!r} refers to no constraint at {rest[:40]!r}; a critique is a list of "
                             "'you did not use W .', 'too long : at most K words .', "
                             "'W is off topic .', or 'all constraints met .'")
    if not found:
        raise ValueError(f"feedback {text!r} is empty: it refers to no constraint")
    return found


class ConstrainedWorld(World):
    """Constrained sentence writing with a gold critic that writes its judgement in words."""

    name = "constrained"

    def __init__(self, eval_fraction: float = 0.2):
        self._splits: dict[str, list[str]] = {"train": [], "eval": []}
        for topic, nouns in TOPICS.items():
            for word in nouns + ADJECTIVES:
                for k in LIMITS:
                    prompt = f"write about the {topic} using {word} in at most {k} words :"
                    digest = hashlib.sha256(prompt.encode()).digest()[0] / 256.0
                    self._splits["eval" if digest < eval_fraction else "train"].append(prompt)

    # ----------------------------------------------------------------- data
    def prompts(self, split: str) -> list[str]:
        if split not in self._splits:
            raise ValueError(f"unknown split {split!r}; use one of {sorted(self._splits)}")
        return list(self._splits[split])

    @staticmethod
    def sentence(rng: random.Random, topic: str, word: str | None = None, max_words: int | None = None,
                 off_topic: bool = False) -> str:
        """Return a grammatical sentence about `topic` (or with one off-topic noun) that uses `word`
        when given and has at most `max_words` words when given (≥ 3; 4 if `word` is an adjective).
        The off-topic noun is dropped when it cannot fit (a required noun in a sentence under 6 words)."""
        other = [n for n in NOUN_TOPIC if NOUN_TOPIC[n] != topic]
        for attempt in range(200):
            if attempt == 100:
                off_topic = False
            long = rng.random() < 0.6
            nouns = [rng.choice(TOPICS[topic]) for _ in range(2 if long else 1)]
            if off_topic:
                nouns[rng.randrange(len(nouns))] = rng.choice(other)
            adjs = [rng.choice(ADJECTIVES) if rng.random() < 0.4 else None for _ in nouns]
            if word is not None:
                if word in ADJECTIVES:
                    adjs[rng.randrange(len(adjs))] = word
                elif word not in nouns:
                    slots = [i for i in range(len(nouns)) if not (off_topic and NOUN_TOPIC[nouns[i]] != topic)]
                    if not slots:
                        continue
                    nouns[rng.choice(slots)] = word
            words = ["the"] + ([adjs[0]] if adjs[0] else []) + [nouns[0], rng.choice(VERBS)]
            if long:
                words += [rng.choice(PREPOSITIONS), "the"] + ([adjs[1]] if adjs[1] else []) + [nouns[1]]
            if max_words is not None and len(words) > max_words:
                continue
            return " ".join(words + ["."])
        raise ValueError(f"cannot write a sentence about {topic} with {word!r} in at most {max_words} words")

    def _demo(self, rng: random.Random, prompt: str) -> str:
        """A demonstration that obeys each constraint only part of the time (what SFT imitates)."""
        topic, word, k = parse_prompt(prompt)
        use = rng.random() < 0.4
        short = rng.random() < 0.5
        off = rng.random() < 0.3
        return self.sentence(rng, topic, word if use else None, k if short else None, off_topic=off)

    def sft_examples(self, n: int, seed: int) -> list[Example]:
        rng = random.Random(seed)
        prompts = self.prompts("train")
        out = []
        for _ in range(n):
            prompt = rng.choice(prompts)
            out.append(Example(prompt, self._demo(rng, prompt)))
        return out

    def refinement(self, rng: random.Random, prompt: str, draft: str, feedback: str, fix_rate: float = 0.8) -> str:
        """Return a minimal edit of `draft` that fixes each problem `feedback` names with probability `fix_rate`.

        An off-topic noun is swapped for a topic noun, a missing required word is put in a
        noun or adjective slot, a sentence over the limit loses adjectives and then its
        prepositional phrase (keeping the required word). Everything the critique does not
        name is copied, so an edit can break an unnamed constraint (an added adjective
        can make the sentence too long). An ungrammatical draft is rewritten from scratch.
        """
        topic, word, k = parse_prompt(prompt)
        problems = parse_feedback(feedback)
        if "ok" in problems:
            return draft
        st = _structure(draft.split())
        if st is None or "grammar" in problems:
            return self.sentence(rng, topic, word if rng.random() < fix_rate else None,
                                 k if rng.random() < fix_rate else None)
        if "topic" in problems and rng.random() < fix_rate:
            for slot in ("n1", "n2"):
                if st[slot] is not None and NOUN_TOPIC[st[slot]] != topic:
                    st[slot] = rng.choice(TOPICS[topic])
        if "word" in problems and rng.random() < fix_rate:
            slots = ["1", "2"] if st["n2"] is not None else ["1"]
            st[("n" if word in NOUN_TOPIC else "adj") + rng.choice(slots)] = word
        if "length" in problems and rng.random() < fix_rate:
            for slot in ("adj2", "adj1"):
                if _length(st) > k and st[slot] is not None and st[slot] != word:
                    st[slot] = None
            if _length(st) > k and st["n2"] is not None:
                if word in (st["n2"], st["adj2"]):  # keep the required word: move it to the subject
                    st["n1"], st["adj1"] = st["n2"], st["adj2"] if st["adj2"] is not None else st["adj1"]
                st["prep"] = st["adj2"] = st["n2"] = None
        return _render(st)

    def pretraining_corpus(self, n: int, seed: int) -> list[str]:
        """Plain demonstrations (40%), refinement documents (40%) and hindsight documents (20%); every
        prompt of both splits appears, as in the reviews world."""
        rng = random.Random(seed)
        prompts = self.prompts("train") + self.prompts("eval")
        docs = []
        for _ in range(n):
            prompt = rng.choice(prompts)
            draft = self._demo(rng, prompt)
            u = rng.random()
            if u < 0.4:
                docs.append(f"{prompt} {draft}")
            elif u < 0.8:
                fb = self.feedback(prompt, draft)
                docs.append(f"{refinement_prompt(prompt, draft, fb)} {self.refinement(rng, prompt, draft, fb)}")
            else:
                docs.append(f"{hindsight_prompt(prompt, self.feedback(prompt, draft))} {draft}")
        return docs

    # ------------------------------------------------------- gold judgement
    def check(self, prompt: str, response: str) -> dict[str, bool]:
        """Return {"grammatical", "word", "length", "topic"}: which checks `response` passes."""
        topic, word, k = parse_prompt(prompt)
        words = response.split()
        nouns = parse_sentence(words)
        if nouns is None:
            return {"grammatical": False, "word": False, "length": False, "topic": False}
        return {"grammatical": True, "word": word in words[:-1], "length": len(words) - 1 <= k,
                "topic": all(NOUN_TOPIC[n] == topic for n in nouns)}

    def gold_reward(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        out = []
        for p, r in zip(prompts, responses):
            c = self.check(p, r)
            out.append(sum(c[name] for name in CONSTRAINTS) / len(CONSTRAINTS) if c["grammatical"] else 0.0)
        return out

    def all_satisfied(self, prompts: Sequence[str], responses: Sequence[str]) -> list[bool]:
        """Return, per pair, whether the response is grammatical and meets all three constraints."""
        return [r == 1.0 for r in self.gold_reward(prompts, responses)]

    def is_grammatical(self, prompt: str, response: str) -> bool:
        return parse_sentence(response.split()) is not None

    # ---------------------------------------------------- language feedback
    def feedback(self, prompt: str, response: str) -> str:
        topic, word, k = parse_prompt(prompt)
        c = self.check(prompt, response)
        if not c["grammatical"]:
            return UNGRAMMATICAL_FEEDBACK
        parts = []
        if not c["word"]:
            parts.append(f"you did not use {word} .")
        if not c["length"]:
            parts.append(f"too long : at most {k} words .")
        if not c["topic"]:
            for noun in dict.fromkeys(parse_sentence(response.split())):
                if NOUN_TOPIC[noun] != topic:
                    parts.append(f"{noun} is off topic .")
        return " ".join(parts) if parts else OK_FEEDBACK

    def marked_words(self, prompt: str, response: str) -> list[int]:
        """Return the indices of the words of `response` that the critique marks as inappropriate.

        Each mark is the *decision* that caused a violation: an off-topic noun; for a
        sentence over the limit, the preposition that opened the optional phrase (a
        sentence without it always fits, since every limit is ≥ 4); when the required
        word is missing, the first word of each noun phrase (the slot the required word
        should have taken). An ungrammatical response marks every word.
        """
        topic, word, k = parse_prompt(prompt)
        words = response.split()
        nouns = parse_sentence(words)
        if nouns is None:
            return list(range(len(words)))
        body = words[:-1]
        marked = {i for i, w in enumerate(body) if w in NOUN_TOPIC and NOUN_TOPIC[w] != topic}
        if len(body) > k:
            marked.update(i for i, w in enumerate(body) if w in PREPOSITIONS)
        if word not in body:
            marked.update(i + 1 for i, w in enumerate(body) if w == "the")
        return sorted(marked)


def _structure(words: Sequence[str]) -> dict | None:
    """Return the slots {adj1, n1, verb, prep, adj2, n2} of a grammatical sentence (None where empty), else None."""
    if parse_sentence(words) is None:
        return None
    w = list(words[:-1])
    st = {"adj1": None, "n1": None, "verb": None, "prep": None, "adj2": None, "n2": None}
    i = 1
    if w[i] in ADJECTIVES:
        st["adj1"], i = w[i], i + 1
    st["n1"], st["verb"], i = w[i], w[i + 1], i + 2
    if i < len(w):
        st["prep"], i = w[i], i + 2
        if w[i] in ADJECTIVES:
            st["adj2"], i = w[i], i + 1
        st["n2"] = w[i]
    return st


def _render(st: dict) -> str:
    words = ["the"] + [x for x in (st["adj1"], st["n1"], st["verb"]) if x is not None]
    if st["n2"] is not None:
        words += [st["prep"], "the"] + [x for x in (st["adj2"], st["n2"]) if x is not None]
    return " ".join(words + ["."])


def _length(st: dict) -> int:
    return len(_render(st).split()) - 1


def refinement_prompt(prompt: str, draft: str, feedback: str) -> str:
    """The context of an ILF refinement: the task, the draft and the critique of the draft."""
    return f"{prompt} draft : {draft} feedback : {feedback} refine :"


def hindsight_prompt(prompt: str, feedback: str) -> str:
    """The context x⁺ of CUT's hindsight ratio: the task followed by the judgement of the answer."""
    return f"{prompt} feedback : {feedback} answer :"


def critique_prompt(prompt: str, response: str) -> str:
    """The input of the feedback-generating (seq2seq) reward model: the task and the answer to critique."""
    return f"{prompt} answer : {response} feedback :"
