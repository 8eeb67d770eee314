"""The tutor world: a student asks a two-digit sum, the tutor answers or scaffolds.

A prompt is a student's question, "what is 47 + 38 ?" or "what is 52 - 38 ?": a
two-digit addition whose ones carry, or a two-digit subtraction whose ones borrow
(and whose result is at least 10). A response is a tutor turn of a few short
sentences from a small grammar (every number from 0 to 199 is one word):

    direct      the answer is 85 .
    solution    first the ones : 7 + 8 = 15 . write 5 , carry 1 . now the tens : 4 + 3 + 1 = 8 .
                so the answer is 85 .
    scaffold    first the ones : 7 + 8 = 15 . write 5 , carry 1 . now the tens : 4 + 3 + 1 = ?
                your turn !
    hint        hint : start with the ones . your turn !

(for a subtraction the steps read "first the ones : 12 - 8 = 4 . write 4 , borrow 1 .
now the tens : 5 - 1 - 3 = ?"). The gold pedagogical reward is a rubric, a sum of
points (eq-tutor-rubric):

    r(x, y) = 0.3·ones + 0.2·carry + 0.2·tens + 0.3·turn + 0.1·hint
              − 1.0·leak − 0.5·wrong − 1.0·u − 0.25·d

ones, carry, tens ∈ {0, 1}: the response states that step correctly (the tens step
counts as a question "= ?" or with its correct result); turn: it hands the last step
to the student ("= ?" or "your turn !") without a leak; hint: a generic hint, only
when no step is shown; leak: it states the final answer ("the answer is N", or the
correct answer after "=" or "is"), which spoils the exercise even when a tutor also
showed steps; wrong: the number of step or answer statements with wrong numbers; u
the fraction of sentences the grammar rejects; d the number of repeated sentences.
An empty response scores −1. A scaffolded turn scores 1, a full solution −0.3 and a
direct answer −1.

No number the grammar writes in a step equals the final answer (the ones results are
below 19, the tens results below 20, a sum is at least 20 and a difference at least 10,
and a borrowed ones digit 10 + o never equals a difference), so the answer's number
anywhere in a turn, even in a sentence the grammar rejects, counts as a leak. (A model
that restated the question could write a number equal to the answer, e.g. 26 in
52 − 26; the grammar has no such sentence, and the rubric would then err on the strict side.)

The SFT corpus is dominated by direct answers and full solutions, like ordinary chat
data; the pretraining corpus has every style equally often, so the base model can
write all of them, plus "number line" documents that put every number 0–199 into the
word-level vocabulary.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .base import Example, World, count_sentence_faults
from .base import split_sentences as _split_sentences

STYLES = ("direct", "solution", "scaffold", "hint")
SFT_STYLE_MIX = (0.6, 0.3, 0.07, 0.03)      # ordinary chat data: mostly answers
PRETRAIN_STYLE_MIX = (0.25, 0.25, 0.25, 0.25)
SFT_SLIP_RATE = 0.05                         # demonstrations with one arithmetic slip
MAX_NUMBER = 199
END_MARKS = (".", "?", "!")

# rubric weights of (eq-tutor-rubric)
POINTS = {"ones": 0.3, "carry": 0.2, "tens": 0.2, "turn": 0.3, "hint": 0.1}
LEAK_PENALTY = 1.0
WRONG_PENALTY = 0.5
UNGRAMMATICAL_PENALTY = 1.0
REPETITION_PENALTY = 0.25
EMPTY_REWARD = -1.0


@dataclass(frozen=True)
class Problem:
    """A two-digit problem a op b with a carry (op "+") or a borrow (op "-")."""

    a: int
    op: str
    b: int

    def __post_init__(self):
        if self.op not in ("+", "-"):
            raise ValueError(f"op must be '+' or '-', got {self.op!r}")
        if not (10 <= self.a <= 99 and 10 <= self.b <= 99):
            raise ValueError(f"operands must be two-digit numbers (10–99), got {self.a} and {self.b}")
        if self.op == "+" and self.a % 10 + self.b % 10 < 10:
            raise ValueError(f"{self.a} + {self.b} has no carry; the tutor world asks only sums whose ones carry")
        if self.op == "-" and (self.a % 10 >= self.b % 10 or self.a - self.b < 10):
            raise ValueError(f"{self.a} - {self.b} needs a borrow in the ones and a result ≥ 10")

    @property
    def answer(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b

    @property
    def prompt(self) -> str:
        return f"what is {self.a} {self.op} {self.b} ?"

    # the three steps of the column method: (left-hand side words, result)
    def ones_step(self) -> tuple[list[str], int]:
        oa, ob = self.a % 10, self.b % 10
        if self.op == "+":
            return [str(oa), "+", str(ob)], oa + ob
        return [str(10 + oa), "-", str(ob)], 10 + oa - ob

    def carry_step(self) -> tuple[int, str]:
        """Return (digit written, "carry" or "borrow")."""
        return self.ones_step()[1] % 10, "carry" if self.op == "+" else "borrow"

    def tens_step(self) -> tuple[list[str], int]:
        ta, tb = self.a // 10, self.b // 10
        if self.op == "+":
            return [str(ta), "+", str(tb), "+", "1"], ta + tb + 1
        return [str(ta), "-", "1", "-", str(tb)], ta - 1 - tb


def parse_problem(prompt: str) -> Problem:
    """Return the problem of a prompt "what is A + B ?" / "what is A - B ?"; a ValueError names what is wrong."""
    words = prompt.split()
    if len(words) != 6 or words[:2] != ["what", "is"] or words[5] != "?" or words[3] not in ("+", "-"):
        raise ValueError(f"not a tutor-world question: {prompt!r}; expected 'what is A + B ?' or 'what is A - B ?'")
    try:
        a, b = int(words[2]), int(words[4])
    except ValueError:
        raise ValueError(f"the operands of {prompt!r} are not numbers") from None
    return Problem(a, words[3], b)


def all_problems() -> list[Problem]:
    """Return every problem of the world, in a fixed order."""
    out = []
    for a in range(10, 100):
        for b in range(10, 100):
            for op in ("+", "-"):
                try:
                    out.append(Problem(a, op, b))
                except ValueError:
                    pass
    return out




def split_sentences(response: str) -> list[list[str]]:
    """Split a tutor turn into sentences ending in ".", "?" or "!" (see `base.split_sentences`)."""
    return _split_sentences(response, END_MARKS)


def _number(word: str) -> int | None:
    if word.isdigit() and len(word) <= 3 and int(word) <= MAX_NUMBER and str(int(word)) == word:
        return int(word)
    return None


def parse_sentence(words: list[str]) -> tuple[str, tuple] | None:
    """Parse one sentence into (kind, fields), or None if the grammar rejects it.

    kinds and fields:
      ones    (lhs words, result)               first the ones : L = R .
      carry   (digit, "carry"/"borrow")         write D , carry 1 .
      tens    (lhs words, result or None)       now the tens : L = R .   /   now the tens : L = ?
      answer  (number,)                         the answer is N .   /   so the answer is N .
      turn    ()                                your turn !
      hint    ()                                hint : start with the ones .
    """
    w, n = words, len(words)
    if n >= 8 and w[:4] == ["first", "the", "ones", ":"] and w[-3] == "=" and w[-1] == "." \
            and _number(w[-2]) is not None:
        return "ones", (w[4:-3], _number(w[-2]))
    if n == 6 and w[0] == "write" and _number(w[1]) is not None and w[2] == "," and w[3] in ("carry", "borrow") \
            and w[4] == "1" and w[5] == ".":
        return "carry", (_number(w[1]), w[3])
    if n >= 8 and w[:4] == ["now", "the", "tens", ":"]:
        if w[-2:] == ["=", "?"]:
            return "tens", (w[4:-2], None)
        if w[-3] == "=" and w[-1] == "." and _number(w[-2]) is not None:
            return "tens", (w[4:-3], _number(w[-2]))
        return None
    if w[-1:] == ["."] and (w[:-1] if w[0] != "so" else w[1:-1])[:3] == ["the", "answer", "is"]:
        body = w[:-1] if w[0] != "so" else w[1:-1]
        if len(body) == 4 and _number(body[3]) is not None:
            return "answer", (_number(body[3]),)
        return None
    if w == ["your", "turn", "!"]:
        return "turn", ()
    if w == ["hint", ":", "start", "with", "the", "ones", "."]:
        return "hint", ()
    return None


def _lhs_ok(lhs: list[str]) -> bool:
    """True when `lhs` is a well-formed sum/difference of numbers (N op N [op N])."""
    if len(lhs) not in (3, 5):
        return False
    return all(_number(t) is not None for t in lhs[0::2]) and all(t in ("+", "-") for t in lhs[1::2])


def _parse_checked(words: list[str]) -> tuple[str, tuple] | None:
    """`parse_sentence`, also rejecting a step whose left-hand side is no well-formed sum or difference."""
    parsed = parse_sentence(words)
    if parsed is not None and parsed[0] in ("ones", "tens") and not _lhs_ok(parsed[1][0]):
        return None
    return parsed


@dataclass
class Assessment:
    """What the rubric saw in one response (the parts of eq-tutor-rubric)."""

    ones: bool = False
    carry: bool = False
    tens: bool = False
    turn: bool = False
    hint: bool = False
    leak: bool = False
    wrong: int = 0           # step or answer statements with wrong numbers
    steps: int = 0           # step statements (ones, carry, tens) made
    correct_steps: int = 0   # ... of which correct
    ungrammatical: float = 0.0
    repeated: int = 0
    empty: bool = False

    @property
    def reward(self) -> float:
        if self.empty:
            return EMPTY_REWARD
        r = sum(POINTS[k] for k in ("ones", "carry", "tens", "turn", "hint") if getattr(self, k))
        return (r - LEAK_PENALTY * self.leak - WRONG_PENALTY * self.wrong - UNGRAMMATICAL_PENALTY * self.ungrammatical
                - REPETITION_PENALTY * self.repeated)


def assess(problem: Problem, response: str) -> Assessment:
    """Return the rubric's reading of `response` to `problem` (see eq-tutor-rubric)."""
    sentences = split_sentences(response)
    out = Assessment()
    if not sentences:
        out.empty = True
        return out
    faults = count_sentence_faults(sentences, _parse_checked)
    out.repeated = faults.repeated
    handed_over = False
    ones_lhs, ones_res = problem.ones_step()
    digit, word = problem.carry_step()
    tens_lhs, tens_res = problem.tens_step()
    for (kind, fields), _ in faults.parsed:
        if kind == "ones":
            out.steps += 1
            ok = fields[0] == ones_lhs and fields[1] == ones_res
            out.ones |= ok
            out.correct_steps += ok
            out.wrong += not ok
            out.leak |= fields[1] == problem.answer
        elif kind == "carry":
            out.steps += 1
            ok = fields == (digit, word)
            out.carry |= ok
            out.correct_steps += ok
            out.wrong += not ok
        elif kind == "tens":
            out.steps += 1
            ok = fields[0] == tens_lhs and fields[1] in (None, tens_res)
            out.tens |= ok
            out.correct_steps += ok
            out.wrong += not ok
            out.leak |= fields[1] == problem.answer
            handed_over |= ok and fields[1] is None
        elif kind == "answer":
            out.leak = True  # any stated final answer spoils the exercise ...
            out.wrong += fields[0] != problem.answer  # ... and a wrong one misleads too
        elif kind == "turn":
            handed_over = True
        elif kind == "hint":
            out.hint = True
    # Within the grammar the answer's number never appears except as a leak (see the module docstring), so
    # any occurrence counts, also inside a sentence the grammar rejects ("is 85 .", "85 !").
    out.leak |= str(problem.answer) in response.split()
    out.hint = out.hint and out.steps == 0
    out.turn = handed_over and not out.leak
    out.ungrammatical = faults.ungrammatical
    return out


def render(problem: Problem, style: str, slip: str | None = None) -> str:
    """Return the world's response of `style` to `problem`; `slip` ("ones", "carry", "tens" or "answer")
    puts one arithmetic error into that statement (a number off by one)."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; use one of {STYLES}")
    ones_lhs, ones_res = problem.ones_step()
    digit, word = problem.carry_step()
    tens_lhs, tens_res = problem.tens_step()
    answer = problem.answer
    if slip == "ones":
        ones_res += 1
    elif slip == "carry":
        digit = (digit + 1) % 10
    elif slip == "tens":
        tens_res += 1
    elif slip == "answer":
        answer += 1
    elif slip is not None:
        raise ValueError(f"slip must be None, 'ones', 'carry', 'tens' or 'answer', got {slip!r}")
    ones = f"first the ones : {' '.join(ones_lhs)} = {ones_res} ."
    carry = f"write {digit} , {word} 1 ."
    if style == "direct":
        return f"the answer is {answer} ."
    if style == "hint":
        return "hint : start with the ones . your turn !"
    if style == "scaffold":
        return f"{ones} {carry} now the tens : {' '.join(tens_lhs)} = ? your turn !"
    return f"{ones} {carry} now the tens : {' '.join(tens_lhs)} = {tens_res} . so the answer is {answer} ."


def style_of(problem: Problem, response: str) -> str:
    """Return a coarse label of a response: leak (states the final answer), scaffold (hands a step to the
    student), hint (generic hint only), steps (steps, no hand-over, no leak) or other."""
    a = assess(problem, response)
    if a.leak:
        return "leak"
    if a.turn and a.steps:
        return "scaffold"
    if a.hint:
        return "hint"
    if a.steps:
        return "steps"
    return "other"


class TutorWorld(World):
    """Two-digit arithmetic help, judged by a pedagogical rubric (eq-tutor-rubric)."""

    name = "tutor"

    def __init__(self, eval_fraction: float = 0.1, train_size: int = 600, eval_size: int = 100):
        self._splits: dict[str, list[str]] = {"train": [], "eval": []}
        for problem in all_problems():
            digest = hashlib.sha256(problem.prompt.encode()).digest()
            split = "eval" if digest[0] / 256.0 < eval_fraction else "train"
            self._splits[split].append((digest[1:5], problem.prompt))
        # a fixed subset of each split, in hash order, half sums and half differences
        for split, size in (("train", train_size), ("eval", eval_size)):
            ranked = [p for _, p in sorted(self._splits[split])]
            plus = [p for p in ranked if "+" in p][: size // 2]
            minus = [p for p in ranked if "-" in p][: size - size // 2]
            self._splits[split] = [p for pair in zip(plus, minus) for p in pair]

    # ----------------------------------------------------------------- data
    def prompts(self, split: str) -> list[str]:
        if split not in self._splits:
            raise ValueError(f"unknown split {split!r}; use one of {sorted(self._splits)}")
        return list(self._splits[split])

    def sample_response(self, rng: random.Random, prompt: str, mix: Sequence[float] = SFT_STYLE_MIX,
                        slip_rate: float = 0.0) -> str:
        problem = parse_problem(prompt)
        style = rng.choices(STYLES, weights=mix)[0]
        slip = None
        if style != "hint" and rng.random() < slip_rate:
            steps = ("ones", "carry") if style == "scaffold" else ("ones", "carry", "tens")  # a scaffold asks for the tens
            slip = "answer" if style == "direct" else rng.choice(steps)
        return render(problem, style, slip)

    def sft_examples(self, n: int, seed: int) -> list[Example]:
        rng = random.Random(seed)
        prompts = self.prompts("train")
        out = []
        for _ in range(n):
            prompt = rng.choice(prompts)
            out.append(Example(prompt, self.sample_response(rng, prompt, SFT_STYLE_MIX, SFT_SLIP_RATE)))
        return out

    def pretraining_corpus(self, n: int, seed: int) -> list[str]:
        # Every style equally often, over train and eval questions (as a web corpus would have
        # all kinds of text); every tenth document counts along the number line, so that all
        # numbers 0–199 are words of the vocabulary and the model has seen them in order.
        rng = random.Random(seed)
        prompts = self.prompts("train") + self.prompts("eval")
        docs = []
        for i in range(n):
            if i % 10 == 0:
                start = (i // 10 * 20) % (MAX_NUMBER + 1)
                docs.append("count : " + " ".join(str(k) for k in range(start, start + 20)) + " .")
                continue
            prompt = rng.choice(prompts)
            docs.append(f"{prompt} {self.sample_response(rng, prompt, PRETRAIN_STYLE_MIX)}")
        return docs

    # ------------------------------------------------------- gold judgement
    def assess(self, prompt: str, response: str) -> Assessment:
        """Return the rubric's reading of `response` (the parts of eq-tutor-rubric)."""
        return assess(parse_problem(prompt), response)

    def gold_reward(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        return [self.assess(p, r).reward for p, r in zip(prompts, responses)]

    def is_grammatical(self, prompt: str, response: str) -> bool:
        a = self.assess(prompt, response)
        return not a.empty and a.ungrammatical == 0.0
