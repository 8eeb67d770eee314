"""The reviews world: its data, its gold reward r = tanh(S/3) − u − 0.5·d − 0.5·o, the oracle and feedback."""

from __future__ import annotations

import math

import pytest

from alignlib.worlds import get_world
from alignlib.worlds.reviews import ITEMS, PROMPT_TEMPLATES

P = "review the pizza :"


@pytest.fixture(scope="module")
def world():
    return get_world("reviews")


def reward(world, response: str, prompt: str = P) -> float:
    return world.gold_reward([prompt], [response])[0]


def _fraction_true(labels) -> float:
    return sum(labels) / len(labels)


# ------------------------------------------------------------------ the data
def test_sft_examples_are_grammatical_with_zero_penalties(world):
    """Every demonstration parses under the world's own grammar and has no ungrammatical, repeated or
    off-topic sentence; its reward is exactly tanh(S/3)."""
    examples = world.sft_examples(2000, seed=0)
    assert len(examples) == 2000
    for ex in examples:
        assert ex.completion.strip(), ex
        assert world.is_grammatical(ex.prompt, ex.completion), ex
        s = world.score(ex.prompt, ex.completion)
        assert s["ungrammatical"] == s["repeated"] == s["off_topic"] == 0.0, (ex, s)
        assert s["reward"] == pytest.approx(math.tanh(s["sentiment"] / 3))


def test_sft_examples_depend_on_seed_only(world):
    """Same seed, same examples (even from a fresh world instance); another seed, other examples."""
    assert world.sft_examples(50, seed=1) == get_world("reviews").sft_examples(50, seed=1)
    assert world.sft_examples(50, seed=1) != world.sft_examples(50, seed=2)


def test_prompt_splits_are_disjoint_and_complete(world):
    """Train and eval prompts are non-empty, disjoint, and together every template × item; SFT uses train only."""
    train, evals = world.prompts("train"), world.prompts("eval")
    assert train and evals
    assert not set(train) & set(evals)
    assert set(train) | set(evals) == {t.format(item=i) for t in PROMPT_TEMPLATES for i in ITEMS}
    assert {ex.prompt for ex in world.sft_examples(500, seed=0)} <= set(train)
    with pytest.raises(ValueError, match="split"):
        world.prompts("test")


def test_unknown_world_lists_valid_ones():
    from alignlib.worlds import WORLDS

    with pytest.raises(ValueError, match="valid worlds: " + ", ".join(sorted(WORLDS))):
        get_world("nope")
    assert {"reviews", "intransitive", "constrained", "tutor", "two_populations"} <= set(WORLDS)


# ------------------------------------------------------------- gold judgement
def test_negation_flips_sign(world):
    """'the pizza was good .' > 0 > 'the pizza was not good .' (negation flips and halves the polarity)."""
    good, not_good = reward(world, "the pizza was good ."), reward(world, "the pizza was not good .")
    assert good > 0 > not_good
    assert world.score(P, "the pizza was not good .")["sentiment"] == pytest.approx(-0.5)
    assert reward(world, "the pizza was not awful .") > 0  # negated negative is mildly positive
    assert reward(world, "i did not like the pizza .") < 0 < reward(world, "i liked the pizza .")


def test_repetition_lowers_reward(world):
    """Repeating a sentence adds no sentiment and costs 0.5 per repeat."""
    once = reward(world, "the pizza was great .")
    twice = reward(world, "the pizza was great . the pizza was great .")
    assert twice == pytest.approx(once - 0.5)
    assert world.score(P, "the pizza was great . the pizza was great .")["repeated"] == 1


def test_ungrammatical_response_is_rejected_and_penalised(world):
    """'great great great .' fails `is_grammatical` and scores below a neutral grammatical review."""
    bad = "great great great ."
    neutral = "the pizza was good . the pizza was bad ."  # sentiment 0, no penalty → reward 0
    assert not world.is_grammatical(P, bad)
    assert world.is_grammatical(P, neutral)
    assert reward(world, neutral) == pytest.approx(0.0)
    assert reward(world, bad) < reward(world, neutral)
    # half the sentences broken costs half the penalty, and positive words in them earn nothing
    assert reward(world, "the pizza was good . great great great .") == pytest.approx(math.tanh(1 / 3) - 0.5)
    # an unfinished last sentence (no ".") is ungrammatical
    assert not world.is_grammatical(P, "the pizza was good . the pizza was")


def test_off_topic_sentence_is_penalised(world):
    """A sentence about another item earns no sentiment and costs 0.5."""
    assert reward(world, "the movie was good .") == pytest.approx(-0.5)
    assert world.score(P, "the movie was good .")["off_topic"] == 1
    on = reward(world, "the pizza was good .")
    assert reward(world, "the pizza was good . i loved the movie .") == pytest.approx(on - 0.5)
    # aspects and "it" are never off-topic
    assert reward(world, "the service was good .") == pytest.approx(on)


def test_empty_response_gets_minus_one(world):
    for empty in ("", "   "):
        assert reward(world, empty) == -1.0
        assert not world.is_grammatical(P, empty)


def test_sentiment_saturates_but_penalties_do_not(world):
    """Ten distinct positive sentences earn less than 1.0 (tanh), and barely more than five;
    repeating one positive sentence five times scores below saying it once."""
    positives = ["the pizza was excellent .", "the pizza was amazing .", "the pizza was perfect .",
                 "the pizza was great .", "the service was excellent .", "the staff was amazing .",
                 "the taste was perfect .", "i loved the pizza .", "i enjoyed the pizza .", "i would recommend it ."]
    ten, five, one = " ".join(positives), " ".join(positives[:5]), positives[0]
    s = world.score(P, ten)
    assert s["ungrammatical"] == s["repeated"] == s["off_topic"] == 0 and s["sentiment"] > 15
    assert reward(world, ten) < 1.0
    assert reward(world, ten) - reward(world, five) < 0.01 < reward(world, one)
    assert reward(world, " ".join([one] * 5)) < reward(world, one)


def test_gold_reward_checks_lengths(world):
    with pytest.raises(ValueError):
        world.gold_reward([P, P], ["the pizza was good ."])


# ---------------------------------------------------------------- the oracle
def test_preference_probability_is_complementary(world):
    """P(a ≻ b) + P(b ≻ a) = 1, P(a ≻ a) = 1/2, and the better review is more likely preferred."""
    a = ["the pizza was good .", "great great great .", "i loved the pizza .", "the pizza was bad ."]
    b = ["the pizza was bad .", "the pizza was good .", "i loved the pizza . i loved the pizza .", "it was fun ."]
    prompts = [P] * len(a)
    ab, ba = world.preference_probability(prompts, a, b), world.preference_probability(prompts, b, a)
    for x, y in zip(ab, ba):
        assert x + y == pytest.approx(1.0, abs=1e-12)
    assert ab[0] > 0.5 and ab[1] < 0.5
    assert world.preference_probability(prompts, a, a) == [0.5] * len(a)


def _big_gap_pairs(n):
    """(prompts, a, b) where a is far better than b: P(a ≻ b) = σ(1.87 / 0.25) ≈ 0.9994."""
    return [P] * n, ["the pizza was excellent . i loved the pizza ."] * n, ["great great great ."] * n


def test_prefer_without_noise_follows_a_large_gap(world):
    """With a large reward gap and no label noise, nearly every label says a ≻ b."""
    prompts, a, b = _big_gap_pairs(2000)
    p = world.preference_probability(prompts[:1], a[:1], b[:1])[0]
    assert p > 0.999
    assert _fraction_true(world.prefer(prompts, a, b, seed=0)) >= 0.99
    assert world.prefer(prompts, a, b, seed=3) == world.prefer(prompts, a, b, seed=3)  # seeded


@pytest.mark.parametrize("noise", [0.2, 0.5])
def test_prefer_label_noise_flips_labels(world, noise):
    """Label noise η flips each label with probability η: on a near-certain pair, P(True) ≈ p(1−η) + (1−p)η
    (= 0.5 at η = 0.5). Tolerance 5 standard errors of n = 4000 Bernoulli draws (≤ 0.04)."""
    n = 4000
    prompts, a, b = _big_gap_pairs(n)
    p = world.preference_probability(prompts[:1], a[:1], b[:1])[0]
    expected = p * (1 - noise) + (1 - p) * noise
    tol = 5 * math.sqrt(expected * (1 - expected) / n)
    frac = _fraction_true(world.prefer(prompts, a, b, seed=1, label_noise=noise))
    assert abs(frac - expected) <= tol, (frac, expected, tol)


@pytest.mark.parametrize("noise", [-0.1, 0.51, 1.0])
def test_prefer_invalid_label_noise_raises(world, noise):
    with pytest.raises(ValueError, match="label_noise"):
        world.prefer([P], ["the pizza was good ."], ["the pizza was bad ."], seed=0, label_noise=noise)


# -------------------------------------------------------------------- feedback
@pytest.mark.parametrize("response, message", [
    ("the pizza was good . great great great .", "sentence 2 is not grammatical ; rewrite it ."),
    ("the pizza was good . the pizza was good .", "sentence 2 repeats an earlier sentence ; remove it ."),
    ("the movie was good .", "sentence 1 talks about the movie , not the pizza ."),
    ("the pizza was awful . i would not recommend it .", "the review is negative ; say what was good about the pizza ."),
    ("the pizza was great . i loved the pizza .", "the review is positive and fluent ; no change needed ."),
    ("", "the review is empty ; write at least one sentence about the pizza ."),
])
def test_feedback_names_the_specific_problem(world, response, message):
    """`feedback` returns the message for the first problem found (grammar, repetition, topic, sentiment)."""
    assert world.feedback(P, response) == message


# ------------------------------------------------- the shared fault counter
def test_count_sentence_faults_counts_repeats_rejections_and_off_topic_sentences():
    """One walk for every world: a repeat is counted (and not parsed again) before the grammar is asked, a
    rejected sentence is ungrammatical, a parse naming another topic is off topic but kept (flagged) in `parsed`;
    u = bad / sentences, and 1 for a response without sentences."""
    from alignlib.worlds.base import count_sentence_faults

    calls = []

    def parse(words):  # "X ." parses to (X, X) when X is a known word; "it ." names no topic
        calls.append(tuple(words))
        return (words[0], None if words[0] == "it" else words[0]) if words[0] in ("lake", "tree", "it") else None

    sentences = [["lake", "."], ["lake", "."], ["tree", "."], ["zzz", "."], ["it", "."], ["zzz", "."], ["lake", "."]]
    faults = count_sentence_faults(sentences, parse, "lake", mentioned=lambda parsed: parsed[1])
    assert (faults.sentences, faults.repeated, faults.bad, faults.off_topic) == (7, 3, 1, 1)
    assert faults.parsed == [(("lake", "lake"), True), (("tree", "tree"), False), (("it", None), True)]
    assert faults.ungrammatical == 1 / 7
    assert calls == [("lake", "."), ("tree", "."), ("zzz", "."), ("it", ".")]  # repeats are not parsed again
    no_topic = count_sentence_faults(sentences, parse)  # without `mentioned` nothing is off topic
    assert no_topic.off_topic == 0 and all(on for _, on in no_topic.parsed)
    empty = count_sentence_faults([], parse, "lake")
    assert (empty.sentences, empty.bad, empty.parsed, empty.ungrammatical) == (0, 0, [], 1.0)


def test_reviews_score_reads_the_shared_fault_counts(world):
    """The reviews world's penalties are the shared counter's: a repeat, an off-topic and a broken sentence."""
    s = world.score(P, "the pizza was good . the pizza was good . the phone was bad . pizza the was .")
    assert (s["repeated"], s["off_topic"], s["ungrammatical"]) == (1.0, 1.0, 0.25)
    assert s["sentiment"] == 1.0  # only the first, on-topic, grammatical sentence counts
