"""The two-populations world: one task, two groups of users who want opposite registers.

A prompt asks about a place ("describe the lake :"). A response is one to four short
sentences, each in one of two registers with disjoint vocabularies:

    formal   the lake is tranquil .           it offers excellent views .
    casual   the lake is super fun !          you will love the lake !

Two groups of users judge the responses. The *formal* group (the majority, share w_0,
default 0.8) likes the formal register; the *casual* group (the minority, w_1 = 0.2)
likes the casual one. With f the fraction of a response's valid sentences that are
formal, u the fraction of sentences the grammar rejects, d the repeated sentences and
o the sentences about another place, group g's gold reward is

    r_formal(x, y) = √f       − u − 0.5 d − 0.5 o                      (eq-twopop-reward)
    r_casual(x, y) = √(1 − f) − u − 0.5 d − 0.5 o

The square root encodes diminishing returns: the first formal sentence pleases the
formal group more than the fourth does. That concavity is what lets a compromise
response (half formal, half casual) give both groups about 0.71 while serving one
group perfectly leaves the other at 0 — the situation in which the egalitarian
(MaxMin) objective helps the minority more than it costs the majority. With linear
tastes (`concave=False`) the trade is zero-sum; the chapter's exercise switches it.

Preference data are *pooled*: each annotator belongs to one group (hidden), labels a
few pairs by their group's Bradley–Terry oracle, and the data set records only an
annotator id (`annotated_pairs`). `gold_reward` is the population average
Σ_g w_g r_g (what "the users" get on average); `group_rewards` gives each group's
reward separately, which is what the chapter evaluates.

The two registers are also the world's two *attributes* (`attributes`: √f and √(1 − f)
less the shared faults), used by directional preference alignment: a user direction
v = (cos θ, sin θ) scores a response by v·a. A prompt may carry a direction header
written with integer weights ×100 at its end, e.g. "describe the lake : < formal=87 casual=50 >"
(`directed_prompt`); each "attribute=weight" is one word of the pocket tokenizer. The
pretraining corpus contains such headers (paired with random responses), so the
tokenizer knows their words but the SFT model has learned no meaning for them.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence

from .base import Example, World, count_sentence_faults, prompt_topic, split_sentences

TOPICS = ["lake", "forest", "city", "mountain", "river", "garden", "village", "bridge",
          "castle", "island", "market", "museum"]
PROMPT_TEMPLATES = ("describe the {topic} :", "tell me about the {topic} .")

REGISTERS = ("formal", "casual")
FORMAL_ADJ = ["tranquil", "remarkable", "elegant", "spacious", "pleasant"]
FORMAL_NOUNS = ["views", "facilities", "walks", "service"]
CASUAL_ADJ = ["fun", "cool", "chill", "awesome"]
CASUAL_INTENSIFIERS = ["super", "really"]
REGISTER_WORDS = (
    frozenset(FORMAL_ADJ + FORMAL_NOUNS + ["offers", "excellent"]),
    frozenset(CASUAL_ADJ + CASUAL_INTENSIFIERS + ["you", "love"]),
)
MAX_SENTENCES = 4

#: the weights ×100 a direction header may carry: round(100 cos θ) for θ on a 15° grid
HEADER_WEIGHTS = tuple(sorted({round(100 * math.cos(math.radians(a))) for a in range(0, 91, 15)}))
SFT_FORMAL_SHARE = 0.6        # demonstrations lean formal, as data from a majority would
REPETITION_PENALTY = 0.5
OFF_TOPIC_PENALTY = 0.5






def parse_sentence(words: list[str]) -> tuple[int, str | None] | None:
    """Parse one sentence (with its end mark); return (register index, place mentioned or None) or None.

    The grammar (PLACE is any of TOPICS):
      formal   the PLACE is FORMAL_ADJ .          it offers excellent FORMAL_NOUN .
      casual   the PLACE is INTENSIFIER CASUAL_ADJ !   you will love the PLACE !
    """
    w, n = words, len(words)
    if n == 5 and w[0] == "the" and w[1] in TOPICS and w[2] == "is" and w[3] in FORMAL_ADJ and w[4] == ".":
        return 0, w[1]
    if n == 5 and w[:3] == ["it", "offers", "excellent"] and w[3] in FORMAL_NOUNS and w[4] == ".":
        return 0, None
    if n == 6 and w[0] == "the" and w[1] in TOPICS and w[2] == "is" and w[3] in CASUAL_INTENSIFIERS \
            and w[4] in CASUAL_ADJ and w[5] == "!":
        return 1, w[1]
    if n == 6 and w[:4] == ["you", "will", "love", "the"] and w[4] in TOPICS and w[5] == "!":
        return 1, w[4]
    return None


def direction_header(direction: Sequence[float]) -> str:
    """Return the prompt header of a unit direction v = (v_formal, v_casual): "< formal=87 casual=50 >".

    The weights are 100·v rounded to the nearest of `HEADER_WEIGHTS` (a 15° grid), the
    words the pocket tokenizer knows. Validation of v is `alignlib.diverse.check_direction`'s job.
    """
    w = [min(HEADER_WEIGHTS, key=lambda h: abs(h - 100 * float(c))) for c in direction]
    return f"< formal={w[0]} casual={w[1]} >"


def strip_header(prompt: str) -> str:
    """Return `prompt` without its direction header (written last, right before the answer)."""
    if prompt.endswith(">") and "<" in prompt:
        return prompt.rsplit("<", 1)[0].strip()
    return prompt


class TwoPopulationsWorld(World):
    """Two user groups, a formal majority and a casual minority, with concave tastes for their register."""

    name = "two_populations"

    def __init__(self, group_weights: Sequence[float] = (0.8, 0.2), concave: bool = True,
                 eval_fraction: float = 0.25):
        weights = [float(w) for w in group_weights]
        if len(weights) != len(REGISTERS) or any(w < 0 for w in weights) or abs(sum(weights) - 1) > 1e-6:
            raise ValueError(f"group_weights must be {len(REGISTERS)} non-negative shares summing to 1 "
                             f"(formal, casual), got {tuple(group_weights)}")
        self.group_weights = tuple(weights)
        self.groups = REGISTERS
        self.concave = concave
        self._splits: dict[str, list[str]] = {"train": [], "eval": []}
        # Held-out prompts are new (template, place) combinations: every place is also asked
        # about in training, with the other template, so the SFT model has written about it.
        for topic in TOPICS:
            digest = hashlib.sha256(topic.encode()).digest()
            held_out = digest[0] / 256.0 < 2 * eval_fraction
            for i, template in enumerate(PROMPT_TEMPLATES):
                split = "eval" if held_out and i == digest[1] % len(PROMPT_TEMPLATES) else "train"
                self._splits[split].append(template.format(topic=topic))

    # ----------------------------------------------------------------- data
    def prompts(self, split: str) -> list[str]:
        if split not in self._splits:
            raise ValueError(f"unknown split {split!r}; use one of {sorted(self._splits)}")
        return list(self._splits[split])

    @staticmethod
    def sentence(rng: random.Random, register: int, topic: str) -> str:
        """Return one grammatical, on-topic sentence in `register` (0 formal, 1 casual)."""
        first = rng.random() < 0.6
        if register == 0:
            return f"the {topic} is {rng.choice(FORMAL_ADJ)} ." if first else \
                f"it offers excellent {rng.choice(FORMAL_NOUNS)} ."
        if first:
            return f"the {topic} is {rng.choice(CASUAL_INTENSIFIERS)} {rng.choice(CASUAL_ADJ)} !"
        return f"you will love the {topic} !"

    def sample_response(self, rng: random.Random, topic: str, formal_share: float,
                        n_sentences: int | None = None) -> str:
        """Return a fault-free response of 1–4 distinct sentences, each formal with probability `formal_share`."""
        n = n_sentences or rng.randint(1, MAX_SENTENCES)
        sentences: list[str] = []
        while len(sentences) < n:
            s = self.sentence(rng, 0 if rng.random() < formal_share else 1, topic)
            if s not in sentences:
                sentences.append(s)
        return " ".join(sentences)

    def sft_examples(self, n: int, seed: int) -> list[Example]:
        rng = random.Random(seed)
        prompts = self.prompts("train")
        return [Example(p, self.sample_response(rng, prompt_topic(p), SFT_FORMAL_SHARE))
                for p in (rng.choice(prompts) for _ in range(n))]

    def pretraining_corpus(self, n: int, seed: int) -> list[str]:
        # Every register mix and place, and (in a third of the documents) a direction header
        # unrelated to the text: the tokenizer learns the header words, the model no meaning for them.
        rng = random.Random(seed)
        prompts = self.prompts("train") + self.prompts("eval")
        docs = []
        for _ in range(n):
            prompt = rng.choice(prompts)
            if rng.random() < 1 / 3:
                prompt = f"{prompt} < formal={rng.choice(HEADER_WEIGHTS)} casual={rng.choice(HEADER_WEIGHTS)} >"
            docs.append(f"{prompt} {self.sample_response(rng, prompt_topic(prompt), rng.random())}")
        return docs

    def directed_prompt(self, prompt: str, direction: Sequence[float]) -> str:
        """Return `prompt` with the header of the unit direction v = (v_formal, v_casual) at its end.

        The header sits next to the answer so that the tiny pocket model can read it easily;
        DPA's paper writes it into the system prompt.
        """
        return f"{strip_header(prompt)} {direction_header(direction)}"

    # ------------------------------------------------------- gold judgement
    def score(self, prompt: str, response: str) -> dict[str, float]:
        """Return the parts of (eq-twopop-reward): formal/casual sentence counts, f, faults and penalty."""
        topic = prompt_topic(strip_header(prompt))
        sentences = split_sentences(response)
        faults = count_sentence_faults(sentences, parse_sentence, topic, mentioned=lambda parsed: parsed[1])
        bad, repeated, off_topic = faults.bad, faults.repeated, faults.off_topic
        counts = [0, 0]
        for (register, _), _on_topic in faults.parsed:  # an off-topic sentence still counts for its register
            counts[register] += 1
        valid = counts[0] + counts[1]
        u = faults.ungrammatical
        penalty = u + REPETITION_PENALTY * repeated + OFF_TOPIC_PENALTY * off_topic
        return {"formal": float(counts[0]), "casual": float(counts[1]), "bad": float(bad),
                "repeated": float(repeated), "off_topic": float(off_topic),
                "formal_fraction": counts[0] / valid if valid else float("nan"), "penalty": penalty}

    def _taste(self, share: float) -> float:
        return math.sqrt(share) if self.concave else share

    def attributes(self, prompts: Sequence[str], responses: Sequence[str]) -> list[tuple[float, float]]:
        """Return (formality, casualness) of each response: the two groups' rewards (eq-twopop-reward).

        A response with no valid sentence gets 0 on both tastes (its penalty is ≥ 1).
        """
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        out = []
        for p, r in zip(prompts, responses):
            s = self.score(p, r)
            f = s["formal_fraction"]
            if math.isnan(f):
                out.append((-s["penalty"], -s["penalty"]))
            else:
                out.append((self._taste(f) - s["penalty"], self._taste(1 - f) - s["penalty"]))
        return out

    def group_rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[float]]:
        """Return one list of gold rewards per group, in the order of `groups` (formal, casual)."""
        attrs = self.attributes(prompts, responses)
        return [[a[g] for a in attrs] for g in range(len(REGISTERS))]

    def group_reward(self, group: int | str, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Return group `group`'s gold reward (index or name: "formal", "casual")."""
        g = REGISTERS.index(group) if isinstance(group, str) and group in REGISTERS else group
        if not isinstance(g, int) or not 0 <= g < len(REGISTERS):
            raise ValueError(f"unknown group {group!r}; use 0/1 or one of {REGISTERS}")
        return [a[g] for a in self.attributes(prompts, responses)]

    def gold_reward(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Return the population-weighted reward Σ_g w_g r_g: what an average user gets."""
        w = self.group_weights
        return [w[0] * a[0] + w[1] * a[1] for a in self.attributes(prompts, responses)]

    def is_grammatical(self, prompt: str, response: str) -> bool:
        sentences = split_sentences(response)
        return bool(sentences) and all(parse_sentence(w) is not None for w in sentences)

    # -------------------------------------------------- pooled annotations
    def group_preference_probability(self, group: int, prompts: Sequence[str], responses_a: Sequence[str],
                                     responses_b: Sequence[str]) -> list[float]:
        """Return group `group`'s Bradley–Terry P(a ≻ b | x) = σ((r_g(a) − r_g(b)) / T)."""
        ra = self.group_reward(group, prompts, responses_a)
        rb = self.group_reward(group, prompts, responses_b)
        t = self.oracle_temperature
        return [1.0 / (1.0 + math.exp(-(a - b) / t)) for a, b in zip(ra, rb)]

    def preference_probability(self, prompts, responses_a, responses_b) -> list[float]:
        """Return the pooled oracle's P(a ≻ b): a random annotator's, Σ_g w_g P_g(a ≻ b)."""
        per_group = [self.group_preference_probability(g, prompts, responses_a, responses_b)
                     for g in range(len(REGISTERS))]
        return [sum(w * p[i] for w, p in zip(self.group_weights, per_group)) for i in range(len(prompts))]

    def random_response(self, rng: random.Random, topic: str) -> str:
        """Return a response for annotation: a random register mix, sometimes with a fault."""
        response = self.sample_response(rng, topic, rng.random())
        fault = rng.random()
        if fault < 0.1:  # a broken sentence
            response += " the " + topic + " is"
        elif fault < 0.15:  # a sentence about another place
            response += f" the {rng.choice([t for t in TOPICS if t != topic])} is {rng.choice(FORMAL_ADJ)} ."
        return response

    def annotated_pairs(self, n_annotators: int, pairs_per_annotator: int, seed: int,
                        responses: Sequence[tuple[str, str, str]] | None = None) -> list[dict]:
        """Return pooled preference rows {prompt, chosen, rejected, annotator, group}.

        Annotator h belongs to group g_h drawn with the group weights; it labels
        `pairs_per_annotator` pairs with its group's oracle. The `group` column is the
        hidden truth, for evaluation only: a method may read `annotator`, never `group`.
        `responses`: optional (prompt, a, b) triples to label (e.g. samples of a policy),
        cycled through; default: `random_response` pairs on train prompts.
        """
        if n_annotators < 1 or pairs_per_annotator < 1:
            raise ValueError(f"need n_annotators ≥ 1 and pairs_per_annotator ≥ 1, got {n_annotators} and "
                             f"{pairs_per_annotator}")
        rng = random.Random(seed)
        prompts = self.prompts("train")
        rows = []
        k = 0
        for h in range(n_annotators):
            g = 0 if rng.random() < self.group_weights[0] else 1
            for _ in range(pairs_per_annotator):
                if responses is not None:
                    x, a, b = responses[k % len(responses)]
                    k += 1
                else:
                    x = rng.choice(prompts)
                    a, b = self.random_response(rng, prompt_topic(x)), self.random_response(rng, prompt_topic(x))
                a_wins = rng.random() < self.group_preference_probability(g, [x], [a], [b])[0]
                chosen, rejected = (a, b) if a_wins else (b, a)
                rows.append({"prompt": x, "chosen": chosen, "rejected": rejected, "annotator": h, "group": g})
        return rows
