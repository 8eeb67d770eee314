"""The intransitive world: descriptions in three styles that beat each other cyclically.

A prompt asks about a place ("describe the lake :"). A response is one to three short
sentences, each written in one of three styles with its own vocabulary:

    plain    the lake is quiet .              it has many trees .
    poetic   the lake whispers softly .       it glows like a lantern .
    playful  wow , the lake is totally epic !  i totally adore the lake !

The gold judge prefers styles like rock–paper–scissors: plain ≻ poetic ≻ playful ≻ plain,
each with probability `style_win`. Its preference mixes that style game with a
Bradley–Terry term on quality q (the transitive part):

    P(a ≻ b | x) = w · M[s(a), s(b)] + (1 − w) · σ((q(a) − q(b)) / T)
    q(x, y)      = 1 − u − 0.5 · d − 0.5 · o

with s(y) the style (`style_of`), M the style matrix, u the fraction of sentences the
grammar rejects, d the repeated sentences, o the sentences about another place. Chapter 5
("The intransitive world", under "The preference game") states P; the book gives no formula for q.
A response mixing styles, or with none, has the extra style "none", which loses to every
style with probability `style_win` and ties with itself. Because the style game has a
strict cycle, no scalar reward r gives P(a ≻ b) = σ(r(a) − r(b)): Bradley–Terry methods
can only pick a corner of the cycle, where they are exploited.

`gold_reward` is the quality q alone (the only part a scalar can express); the gold
preference oracle, `prefer` and `gold_verdict` use the full preference P above.
The SFT corpus is skewed towards the plain style, so the SFT policy is exploitable.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence

import numpy as np

from ..nash_games import check_probabilities, cyclic_preference_matrix
from .base import Example, World, count_sentence_faults, prompt_topic, split_sentences

TOPICS = [
    "lake", "forest", "city", "mountain", "river", "garden", "ocean", "village", "desert", "bridge",
    "castle", "island", "market", "library", "station", "harbor", "valley", "meadow", "tower", "beach",
    "cave", "farm", "temple", "palace", "museum", "field", "canyon", "glacier", "volcano", "orchard",
]
PROMPT_TEMPLATES = ("describe the {topic} :", "tell me about the {topic} .", "what is the {topic} like ?")

STYLES = ("plain", "poetic", "playful")
PLAIN_ADJ = ["large", "small", "old", "busy", "quiet", "clean", "crowded", "modern"]
PLAIN_NOUNS = ["trees", "paths", "shops", "benches", "signs", "visitors"]
POETIC_VERBS = ["whispers", "dreams", "glows", "sleeps", "sings", "shimmers"]
POETIC_ADVERBS = ["softly", "gently", "slowly", "silently", "tenderly"]
POETIC_IMAGES = ["dream", "song", "memory", "lantern", "feather"]
PLAYFUL_ADJ = ["awesome", "epic", "wild", "cool"]
PLAYFUL_VERBS = ["adore", "dig", "love"]
# Marker words: a response's style is read off these vocabularies alone (disjoint sets).
STYLE_WORDS = (
    frozenset(PLAIN_ADJ + PLAIN_NOUNS + ["has", "many"]),
    frozenset(POETIC_VERBS + POETIC_ADVERBS + POETIC_IMAGES + ["like"]),
    frozenset(PLAYFUL_ADJ + PLAYFUL_VERBS + ["wow", "totally"]),
)

SFT_STYLE_MIX = (0.7, 0.2, 0.1)   # skewed: the SFT policy's best response (playful) wins often
STYLE_WEIGHT = 0.75               # w in the preference P (module docstring)
STYLE_WIN = 0.9                   # P(style i ≻ style i+1 mod 3)
REPETITION_PENALTY = 0.5
OFF_TOPIC_PENALTY = 0.5






def parse_sentence(words: list[str]) -> tuple[int, str | None] | None:
    """Parse one sentence (with its end mark); return (style index, place mentioned or None) or None.

    The grammar, one template pair per style (PLACE is any of TOPICS):
      plain    the PLACE is ADJ .               it has many NOUN .
      poetic   the PLACE VERB ADVERB .          it VERB like a IMAGE .
      playful  wow , the PLACE is totally ADJ !   i totally VERB the PLACE !
    """
    w, n = words, len(words)
    if n == 5 and w[0] == "the" and w[1] in TOPICS and w[2] == "is" and w[3] in PLAIN_ADJ and w[4] == ".":
        return 0, w[1]
    if n == 5 and w[:3] == ["it", "has", "many"] and w[3] in PLAIN_NOUNS and w[4] == ".":
        return 0, None
    if n == 5 and w[0] == "the" and w[1] in TOPICS and w[2] in POETIC_VERBS and w[3] in POETIC_ADVERBS \
            and w[4] == ".":
        return 1, w[1]
    if n == 6 and w[0] == "it" and w[1] in POETIC_VERBS and w[2:4] == ["like", "a"] and w[4] in POETIC_IMAGES \
            and w[5] == ".":
        return 1, None
    if n == 8 and w[:3] == ["wow", ",", "the"] and w[3] in TOPICS and w[4:6] == ["is", "totally"] \
            and w[6] in PLAYFUL_ADJ and w[7] == "!":
        return 2, w[3]
    if n == 6 and w[:2] == ["i", "totally"] and w[2] in PLAYFUL_VERBS and w[3] == "the" and w[4] in TOPICS \
            and w[5] == "!":
        return 2, w[4]
    return None


def style_of(response: str) -> int | None:
    """Return the style index of `response` (0 plain, 1 poetic, 2 playful), or None if mixed or styleless."""
    words = set(response.split())
    found = [s for s, vocab in enumerate(STYLE_WORDS) if words & vocab]
    return found[0] if len(found) == 1 else None


class IntransitiveWorld(World):
    """Cyclic (rock–paper–scissors) preferences between response styles, plus quality."""

    name = "intransitive"

    def __init__(self, eval_fraction: float = 0.2, style_weight: float = STYLE_WEIGHT, style_win: float = STYLE_WIN):
        if not 0.0 <= style_weight <= 1.0:
            raise ValueError(f"style_weight must be in [0, 1], got {style_weight}")
        self.style_weight = style_weight
        self.style_matrix = cyclic_preference_matrix(len(STYLES), style_win)  # validates style_win
        # The game over S + 1 style classes, the last being "none" (mixed or styleless).
        s = len(STYLES)
        full = np.full((s + 1, s + 1), 1.0 - style_win)
        full[:s, :s] = self.style_matrix
        full[:s, s] = style_win
        full[s, s] = 0.5
        self.style_game = full
        self._splits: dict[str, list[str]] = {"train": [], "eval": []}
        for template in PROMPT_TEMPLATES:
            for topic in TOPICS:
                digest = hashlib.sha256(f"{template}|{topic}".encode()).digest()[0] / 256.0
                self._splits["eval" if digest < eval_fraction else "train"].append(template.format(topic=topic))

    # ----------------------------------------------------------------- data
    def prompts(self, split: str) -> list[str]:
        if split not in self._splits:
            raise ValueError(f"unknown split {split!r}; use one of {sorted(self._splits)}")
        return list(self._splits[split])

    @staticmethod
    def _sentence(rng: random.Random, style: int, topic: str) -> str:
        first = rng.random() < 0.6  # sentences naming the place are the commoner kind
        if style == 0:
            return f"the {topic} is {rng.choice(PLAIN_ADJ)} ." if first else f"it has many {rng.choice(PLAIN_NOUNS)} ."
        if style == 1:
            if first:
                return f"the {topic} {rng.choice(POETIC_VERBS)} {rng.choice(POETIC_ADVERBS)} ."
            return f"it {rng.choice(POETIC_VERBS)} like a {rng.choice(POETIC_IMAGES)} ."
        if first:
            return f"wow , the {topic} is totally {rng.choice(PLAYFUL_ADJ)} !"
        return f"i totally {rng.choice(PLAYFUL_VERBS)} the {topic} !"

    def sample_response(self, rng: random.Random, topic: str, style: int, n_sentences: int | None = None) -> str:
        """Return a top-quality response about `topic` in `style`: grammatical, on topic, no repeats."""
        n = n_sentences or rng.randint(1, 3)
        sentences: list[str] = []
        while len(sentences) < n:
            s = self._sentence(rng, style, topic)
            if s not in sentences:
                sentences.append(s)
        return " ".join(sentences)

    def sft_examples(self, n: int, seed: int) -> list[Example]:
        rng = random.Random(seed)
        prompts = self.prompts("train")
        out = []
        for _ in range(n):
            prompt = rng.choice(prompts)
            style = rng.choices(range(len(STYLES)), weights=SFT_STYLE_MIX)[0]
            out.append(Example(prompt, self.sample_response(rng, prompt_topic(prompt), style)))
        return out

    def pretraining_corpus(self, n: int, seed: int) -> list[str]:
        # Pretraining sees every style equally often and every place, so the base model
        # can write all three styles; only the SFT stage skews the style mix.
        rng = random.Random(seed)
        prompts = self.prompts("train") + self.prompts("eval")
        docs = []
        for _ in range(n):
            prompt = rng.choice(prompts)
            docs.append(f"{prompt} {self.sample_response(rng, prompt_topic(prompt), rng.randrange(len(STYLES)))}")
        return docs

    def best_response(self, prompt: str, style: int) -> str:
        """Return a fixed top-quality (q = 1) response of `style` to `prompt`: a best-response candidate."""
        topic = prompt_topic(prompt)
        return (f"the {topic} is quiet .", f"the {topic} glows softly .", f"wow , the {topic} is totally epic !")[style]

    # ------------------------------------------------------- gold judgement
    def score(self, prompt: str, response: str) -> dict[str, float]:
        """Return the quality q of the module docstring, its parts, and the style class."""
        topic = prompt_topic(prompt)
        style = style_of(response)
        style_class = len(STYLES) if style is None else style
        sentences = split_sentences(response)
        if not sentences:
            return {"quality": -1.0, "ungrammatical": 1.0, "repeated": 0.0, "off_topic": 0.0, "style": style_class}
        faults = count_sentence_faults(sentences, parse_sentence, topic, mentioned=lambda parsed: parsed[1])
        u, repeated, off_topic = faults.ungrammatical, faults.repeated, faults.off_topic
        quality = 1.0 - u - REPETITION_PENALTY * repeated - OFF_TOPIC_PENALTY * off_topic
        return {"quality": quality, "ungrammatical": u, "repeated": float(repeated), "off_topic": float(off_topic),
                "style": style_class}

    def gold_reward(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Return the quality q only: the transitive part of the preference (no scalar holds the style cycle)."""
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        return [self.score(p, r)["quality"] for p, r in zip(prompts, responses)]

    def is_grammatical(self, prompt: str, response: str) -> bool:
        sentences = split_sentences(response)
        return bool(sentences) and all(parse_sentence(w) is not None for w in sentences)

    def _style_probability(self, style_a: int, style_b: int) -> float:
        """Return M[s(a), s(b)] of the style game (the "none" class included)."""
        return float(self.style_game[style_a, style_b])

    def preference_probability(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        """Return P(a ≻ b | x) of the module docstring; an error if any value leaves [0, 1]."""
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise ValueError(f"got {len(prompts)} prompts, {len(responses_a)} and {len(responses_b)} responses")
        w, t = self.style_weight, self.oracle_temperature
        out = []
        for x, a, b in zip(prompts, responses_a, responses_b):
            sa, sb = self.score(x, a), self.score(x, b)
            quality = 1.0 / (1.0 + math.exp(-(sa["quality"] - sb["quality"]) / t))
            out.append(w * self._style_probability(int(sa["style"]), int(sb["style"])) + (1 - w) * quality)
        return check_probabilities(out, f"{self.name} world's gold preference").tolist()

    def gold_verdict(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        """Return 1 where P(a ≻ b) > ½, 0 where < ½, 0.5 on a tie: the general preference, not a reward."""
        return [1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5
                for p in self.preference_probability(prompts, responses_a, responses_b)]

    # ------------------------------------------------------- game quantities
    def style_distribution(self, responses: Sequence[str]) -> np.ndarray:
        """Return the fraction of responses in each style class, [S + 1] (last entry: mixed or none)."""
        counts = np.zeros(len(STYLES) + 1)
        for r in responses:
            s = style_of(r)
            counts[len(STYLES) if s is None else s] += 1
        if not counts.sum():
            raise ValueError("style_distribution needs at least one response")
        return counts / counts.sum()

    def style_exploitability(self, style_probs) -> float:
        """Return max_y P(y ≻ π) − ½ for a policy of top-quality responses with these style probabilities.

        `style_probs` has S entries (pure styles) or S + 1 (last: mixed/none). With equal
        quality the BT term is ½, so this is w · (max_s (M π)_s − ½).
        """
        p = np.asarray(style_probs, dtype=float)
        if p.shape == (len(STYLES),):
            p = np.append(p, 0.0)
        if p.shape != (len(STYLES) + 1,) or (p < 0).any() or abs(p.sum() - 1) > 1e-6:
            raise ValueError(f"style_probs must be a probability vector of length {len(STYLES)} or "
                             f"{len(STYLES) + 1}, got {style_probs}")
        return float(self.style_weight * ((self.style_game @ p).max() - 0.5))

    def exploitability(self, prompts: Sequence[str], responses: Sequence[str]) -> float:
        """Return max_y mean_i P(y ≻ responses_i | prompts_i) − ½: exact for the sampled policy.

        P depends on y only through its style class and quality; a top-quality response of
        some pure style always maximises it (the "none" class is dominated), so the max over
        all responses is the max over the S `best_response` candidates.
        """
        if not prompts or len(prompts) != len(responses):
            raise ValueError(f"need matching, non-empty prompts and responses; got {len(prompts)} and {len(responses)}")
        best = -1.0
        for s in range(len(STYLES)):
            challengers = [self.best_response(x, s) for x in prompts]
            best = max(best, float(np.mean(self.preference_probability(prompts, challengers, responses))))
        return best - 0.5
