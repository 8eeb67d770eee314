"""Language feedback: the constrained world's critic, CUT's loss, the "cut" data kind, ILF's selection and loop."""

from __future__ import annotations

import random

import pytest
import torch

from alignlib.data import DataError, collate_examples, load_rows, tokenize_rows
from alignlib.feedback import (
    FeedbackRewardModel,
    approved_rows,
    critic_rows,
    cut_rows,
    ilf,
    ilf_targets,
    incorporation_score,
    select_refinement,
    violations_named,
)
from alignlib.losses.feedback import cut_loss, hindsight_flags, log1m_exp
from alignlib.losses.sft import sft_loss
from alignlib.worlds import get_world
from alignlib.worlds.constrained import (
    CONSTRAINTS,
    OK_FEEDBACK,
    parse_feedback,
    parse_prompt,
)

P = "write about the river using fish in at most 5 words :"


@pytest.fixture(scope="module")
def world():
    return get_world("constrained")


@pytest.fixture(scope="module")
def pocket():
    from alignlib.pocket import load_pocket

    return load_pocket("constrained")


# ------------------------------------------------------------------ world
def test_gold_reward_counts_satisfied_constraints(world):
    assert world.gold_reward([P], ["the fish sleeps ."]) == [1.0]
    assert world.gold_reward([P], ["the boat sleeps ."]) == [pytest.approx(2 / 3)]  # no "fish"
    assert world.gold_reward([P], ["the fish sleeps under the old car ."]) == [pytest.approx(1 / 3)]  # long, off topic
    assert world.gold_reward([P], ["fish the sleeps ."]) == [0.0]
    assert not world.is_grammatical(P, "fish the sleeps .") and world.is_grammatical(P, "the fish sleeps .")


def test_feedback_round_trips_to_the_violated_constraints(world):
    """Must-hold: the critique parses back to exactly the constraints the gold checker finds violated."""
    rng = random.Random(0)
    prompts = world.prompts("train")
    for _ in range(500):
        p = rng.choice(prompts)
        topic, word, k = parse_prompt(p)
        y = world.sentence(rng, topic, word if rng.random() < 0.5 else None, k if rng.random() < 0.5 else None,
                           off_topic=rng.random() < 0.4)
        c = world.check(p, y)
        violated = {name for name in CONSTRAINTS if not c[name]}
        fb = world.feedback(p, y)
        assert violations_named(fb) == violated, (p, y, fb)
        assert (fb == OK_FEEDBACK) == (not violated)
        points = parse_feedback(fb)
        if "word" in points:
            assert points["word"] == word
        if "length" in points:
            assert int(points["length"]) == k
    assert parse_feedback(world.feedback(P, "fish fish")) == {"grammar": ""}


def test_feedback_that_names_no_constraint_is_an_error():
    for bad in ("", "nice work .", "you did not use fish . and more"):
        with pytest.raises(ValueError, match="no constraint|empty"):
            parse_feedback(bad)
    with pytest.raises(ValueError, match="constrained-writing prompt"):
        parse_prompt("review the pizza :")


def test_marked_words_point_at_what_the_critique_names(world):
    y = "the fish sleeps under the old car ."  # 7 words, limit 5, "car" off topic
    assert world.marked_words(P, y) == [3, 6]  # "under" (opened the phrase that broke the limit), "car" (off topic)
    assert world.marked_words(P, "the fish sleeps .") == []
    assert world.marked_words(P, "the car sleeps .") == [1]  # off topic, and the slot "fish" should have taken
    assert world.marked_words(P, "the old boat sleeps .") == [1]  # no "fish": the noun phrase's first word
    assert world.marked_words(P, "fish the .") == [0, 1, 2]


def test_sft_demonstrations_often_violate_constraints(world):
    ex = world.sft_examples(1000, seed=0)
    r = world.gold_reward([e.prompt for e in ex], [e.completion for e in ex])
    full = sum(x == 1.0 for x in r) / len(r)
    assert 0.1 < full < 0.5  # something to learn, and something to imitate
    assert all(world.is_grammatical(e.prompt, e.completion) for e in ex)


# ------------------------------------------------------------------- CUT
def _random_case(seed=0, B=3, T=6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, 11, generator=g)
    lp = torch.log_softmax(logits, -1)[..., 0]
    mask = torch.ones(B, T)
    mask[0, 4:] = 0
    marks = (torch.rand(B, T, generator=g) < 0.4).float()
    return lp, mask, marks


def test_cut_without_marks_is_sft():
    lp, mask, _ = _random_case()
    loss, _ = cut_loss(lp, mask, torch.zeros_like(mask))
    assert torch.allclose(loss, sft_loss(lp, mask)[0])


def test_cut_unmarked_positions_keep_the_likelihood_loss():
    """Must-hold: per position, an unmarked token's loss is −log p, a marked one's −w log(1 − p)."""
    lp, mask, marks = _random_case(1)
    n = mask.sum()
    loss, m = cut_loss(lp, mask, marks, unlikelihood_weight=2.0)
    kept = mask * (1 - marks)
    expected = (-(lp * kept).sum() - 2.0 * (torch.log1p(-lp.exp()) * marks * mask).sum()) / n
    assert torch.allclose(loss, expected, atol=1e-6)
    assert m["marked_tokens"] == (marks * mask).sum().item()
    # padding is never marked: marks outside the mask change nothing
    assert torch.allclose(cut_loss(lp, mask, torch.ones_like(mask) * (1 - mask) + marks * mask)[0],
                          cut_loss(lp, mask, marks * mask)[0])


def test_cut_gradient_lowers_marked_and_raises_unmarked_probabilities():
    """Must-hold: one gradient step lowers p of the marked tokens and raises p of the unmarked ones."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 7, generator=g, requires_grad=True)
    labels = torch.randint(7, (2, 5), generator=g)
    marks = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 0, 0, 0]]).float()
    mask = torch.ones(2, 5)

    def probs(lg):
        return torch.log_softmax(lg, -1).gather(-1, labels[..., None]).squeeze(-1)

    loss, _ = cut_loss(probs(logits), mask, marks)
    loss.backward()
    with torch.no_grad():
        after = probs(logits - 0.1 * logits.grad).exp()
        before = probs(logits).exp()
    assert (after[marks.bool()] < before[marks.bool()]).all()
    assert (after[~marks.bool()] > before[~marks.bool()]).all()


def test_log1m_exp_is_stable_and_exact():
    x = torch.tensor([-1e-8, -1e-3, -0.5, -5.0, -50.0])
    assert torch.isfinite(log1m_exp(x)).all()
    assert torch.allclose(log1m_exp(x[1:]), torch.log(1 - x[1:].exp()), rtol=1e-4)


def test_hindsight_flags_mark_tokens_the_judgement_makes_likelier():
    plain = torch.log(torch.tensor([[0.5, 0.2, 0.1]]))
    hind = torch.log(torch.tensor([[0.5, 0.4, 0.105]]))
    flags = hindsight_flags(hind, plain, torch.ones(1, 3), threshold=1.1)
    assert flags.tolist() == [[0, 1, 0]]  # ratio 1, 2, 1.05
    assert hindsight_flags(plain, plain, torch.ones(1, 3)).sum() == 0  # unchanged judgement: CUT is MLE
    with pytest.raises(ValueError, match="same shape"):
        hindsight_flags(hind, plain[:, :2], torch.ones(1, 3))
    with pytest.raises(ValueError, match="same shape"):
        cut_loss(plain, torch.ones(1, 2), torch.ones(1, 3))


# ------------------------------------------------------------- cut data
def test_cut_data_validation_errors():
    ok = {"prompt": P, "completion": "the fish sleeps .", "unlikely": [1]}
    assert load_rows([ok], "cut")[0]["unlikely"] == [1]
    cases = [
        ({"prompt": P, "completion": "the fish ."}, "missing column"),
        ({**ok, "unlikely": [9]}, "outside the completion"),
        ({**ok, "unlikely": "1"}, "list of word indices"),
        ({**ok, "unlikely": [0, 1, 2, 3]}, "every word"),
        ({**ok, "completion": "  "}, "empty"),
        ({**ok, "prompt": 3}, "expected a string"),
    ]
    for row, message in cases:
        with pytest.raises(DataError, match=message):
            load_rows([row], "cut")
    with pytest.raises(DataError, match="no rows"):
        load_rows([], "cut")


def test_cut_rows_tokenise_marks_onto_tokens(pocket, world):
    _, tok = pocket
    rows, counts = cut_rows(world, [P, P, P], ["the fish sleeps under the old car .", "the fish sleeps .", ""],
                            hindsight=True)
    assert counts == {"approved": 1, "marked": 1, "hindsight": 1, "skipped_empty": 1, "skipped_all_marked": 0}
    assert rows[1]["unlikely"] == [] and "feedback : too long" in rows[1]["prompt"]  # CUT's positive branch
    examples = tokenize_rows(load_rows(rows, "cut"), tok, "cut")
    assert examples[0].unlikely[0] == [0, 0, 0, 1, 0, 0, 1, 0, 0]  # 8 words + EOS; "under", "car" marked
    batch = collate_examples(examples, tok.pad_token_id)
    start = len(examples[0].prompt_ids)
    assert batch["unlikely_mask"][0, start + 2:start + 8].tolist() == [0, 1, 0, 0, 1, 0]
    assert batch["unlikely_mask"].sum().item() == 2
    assert (batch["unlikely_mask"] <= batch["completion_mask"]).all()


# -------------------------------------------------------- ILF selection
def test_selection_picks_the_refinement_that_fixes_the_most(world):
    """Must-hold: on constructed cases the selected refinement satisfies the most constraints."""
    draft = "the fish sleeps under the old car ."  # too long and off topic
    fb = world.feedback(P, draft)
    refinements = ["the boat sleeps under the car .", "the car sleeps .", "the fish rests .", "fish fish", ""]
    best, scores = select_refinement(fb, refinements, lambda r: world.is_grammatical(P, r))
    assert refinements[best] == "the fish rests ."
    gold = world.gold_reward([P] * len(refinements), refinements)
    assert gold[best] == max(gold)
    assert scores[3] == scores[4] == -1.0
    with pytest.raises(ValueError, match="no refinements"):
        select_refinement(fb, [], lambda r: True)
    with pytest.raises(ValueError, match="no constraint"):
        incorporation_score("well done", "the fish rests .", True)


def test_approved_and_critic_rows(world):
    ps, ys = [P, P], ["the fish sleeps .", "the car sleeps ."]
    assert approved_rows(world, ps, ys) == [{"prompt": P, "completion": "the fish sleeps ."}]
    rows = critic_rows(world, ps, ys)
    assert rows[1]["completion"] == "you did not use fish . car is off topic ."
    assert rows[1]["prompt"].endswith("answer : the car sleeps . feedback :")


def test_ilf_round_and_iteration_run(tmp_path, pocket, world):
    from alignlib.config import TrainConfig
    from alignlib.pocket import load_pocket

    model, tok = pocket
    base, _ = load_pocket("constrained", stage="base")
    rec = ilf_targets(model, base, tok, world, world.prompts("train")[:12], n_refinements=4, seed=0)
    assert rec.drafts == 12 and rec.approved + rec.refined + rec.skipped == 12
    assert len(rec.rows) == rec.approved + rec.refined
    before = [p.detach().clone() for p in model.parameters()]

    def cfg(r, n):
        return TrainConfig(method="sft", world="constrained", max_steps=2, per_device_train_batch_size=4,
                           learning_rate=1e-4, output_dir=str(tmp_path / f"ilf{r}"), save_steps=0, progress=False,
                           logging_steps=0)

    policy, records = ilf(model, base, tok, world, cfg, labels=8, rounds=2, n_refinements=2, seed=0)
    assert len(records) == 2 and sum(r.drafts for r in records) == 8
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the input policy is untouched
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_cut_method_trains_through_the_loop(tmp_path, pocket, world):
    import copy

    from alignlib.config import TrainConfig
    from alignlib.loop import train

    model, tok = pocket
    rows, _ = cut_rows(world, [P] * 4, ["the fish sleeps under the old car .", "the fish sleeps .",
                                         "the car sleeps .", "the fish rests by the boat ."])
    cfg = TrainConfig(method="cut", world="constrained", max_steps=2, per_device_train_batch_size=4,
                      learning_rate=1e-4, output_dir=str(tmp_path / "cut"), save_steps=0, progress=False,
                      logging_steps=0)
    run = train(cfg, model=copy.deepcopy(model), tokenizer=tok, dataset=rows)
    assert run.history[-1]["marked_tokens"] > 0


def test_feedback_reward_model_scores_with_the_approving_critique(pocket, world):
    model, tok = pocket
    rm = FeedbackRewardModel(model, tok)
    r = rm([P, P], ["the fish sleeps .", "the car sleeps ."])
    assert len(r) == 2 and all(x < 0 for x in r)
    assert rm.token_rewards([P], ["the fish sleeps ."]).shape == (1, len(OK_FEEDBACK.split()) + 1)


def test_empty_refinements_are_skipped_and_counted(pocket, world):
    model, tok = pocket

    def empty_refiner(prompts, drafts, critiques, seed):
        return [""] * len(prompts)

    rec = ilf_targets(model, empty_refiner, tok, world, world.prompts("train")[:10], n_refinements=3, seed=0)
    assert rec.refined == 0 and rec.skipped == rec.drafts - rec.approved
    assert len(rec.rows) == rec.approved
    with pytest.raises(ValueError, match="n_refinements"):
        ilf_targets(model, empty_refiner, tok, world, world.prompts("train")[:2], n_refinements=0, seed=0)
