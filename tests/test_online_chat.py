"""Online methods with prompts in TRL's conversational prompt-only format: {"prompt": [{"role", "content"}, ...]}.

The messages are rendered once by the tokenizer's chat template (with the generation
prompt); every sampler then feeds the model exactly the ids of
`apply_chat_template(..., add_generation_prompt=True, tokenize=True)`: no second BOS.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignlib.config import TrainConfig
from alignlib.data import DataError, RenderedPrompt, render_prompts
from alignlib.loop import online_prompts, train
from alignlib.online import OnlineGroups, OnlinePairs, judge_by_oracle
from alignlib.rollout import sample
from alignlib.selfplay import sample_mixture

REPO = Path(__file__).resolve().parents[1]

# Chat templates whose markers are words of the pocket vocabulary (the pocket tokenizer is word-level).
# WITH_BOS writes BOS itself, as most instruction-tuned templates do: encoding its text with the
# tokenizer's special tokens again would double it; it closes an assistant turn with EOS, so a prefilled
# answer must be continued (continue_final_message), not closed. NO_BOS writes none: the ids must then have no BOS
# at all, though the pocket tokenizer adds one to plain text.
WITH_BOS = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }} "
            "{% elif m['role'] == 'user' %}{{ m['content'] }}{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}"
            "{% endfor %}")
NO_BOS = "{% for m in messages %}{{ m['content'] }} {% endfor %}"


def _chat(world, i: int) -> list[dict]:
    prompts = world.prompts("train")
    messages = [{"role": "user", "content": prompts[i % len(prompts)]}]
    return ([{"role": "system", "content": "write a short review ."}] + messages) if i % 2 else messages


def _template_ids(tok, messages) -> list[int]:
    prefill = messages[-1]["role"] == "assistant"  # TRL's rule: continue a started assistant message
    out = tok.apply_chat_template(messages, add_generation_prompt=not prefill, continue_final_message=prefill,
                                  tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.fixture(scope="module")
def chat_tokenizers(pocket_reviews):
    out = {}
    for name, template in (("with_bos", WITH_BOS), ("no_bos", NO_BOS)):
        tok = copy.deepcopy(pocket_reviews[1])
        tok.chat_template = template
        out[name] = tok
    return out


@pytest.mark.parametrize("template", ["with_bos", "no_bos"])
def test_every_sampler_feeds_exactly_the_chat_template_ids(pocket_reviews, reviews_world, chat_tokenizers, template):
    """rollout.sample, the Nash mixture sampler and the online sources encode a conversational prompt as
    apply_chat_template(tokenize=True) does (a final assistant message is continued, not closed); reward
    functions receive the rendered text."""
    model, _ = pocket_reviews
    tok = chat_tokenizers[template]
    chats = [_chat(reviews_world, i) for i in range(3)]
    chats.append(chats[0] + [{"role": "assistant", "content": "i liked the"}])  # a prefilled answer
    expected = [_template_ids(tok, m) for m in chats]
    assert expected[3][:len(expected[0])] == expected[0] and len(expected[3]) == len(expected[0]) + 3
    assert tok.eos_token_id not in expected[3]
    bos = tok.bos_token_id
    assert all(ids.count(bos) == (template == "with_bos") for ids in expected)
    assert all(tok.unk_token_id not in ids for ids in expected)

    s = sample(model, tok, chats, max_new_tokens=4, seed=0)
    assert s.prompt_ids == expected
    assert all(isinstance(p, RenderedPrompt) and p.messages == m for p, m in zip(s.prompts, chats))
    mix = sample_mixture(model, model, tok, chats, mixture_coef=0.5, max_new_tokens=4, seed=0)
    assert mix.prompt_ids == expected
    # rendering is idempotent: already rendered prompts are sampled from identically
    assert sample(model, tok, render_prompts(tok, chats), max_new_tokens=4, seed=0).prompt_ids == expected

    seen = []

    def reward(prompts, responses):
        seen.extend(prompts)
        return reviews_world.gold_reward(prompts, responses)

    common = dict(per_device=2, accumulation=1, world_size=1, seed=3, max_new_tokens=4)
    groups = OnlineGroups(lambda: model, tok, chats, reward_fn=reward, samples_per_prompt=2, **common)
    pairs = OnlinePairs(lambda: model, tok, chats, judge=judge_by_oracle(reviews_world), **common)
    rendered = {p: ids for p, ids in zip(render_prompts(tok, chats), expected)}
    for src in (groups, pairs):
        batch = src.micro_batch(0, 0, 0)
        for row, completion in zip(batch["input_ids"].tolist(), batch["completion_mask"].tolist()):
            n = completion.index(1)  # right-padded: the prompt is the row's first n tokens
            assert row[:n] in expected
    assert seen and all(isinstance(p, RenderedPrompt) and p in rendered for p in seen)


def test_text_that_already_starts_with_bos_gets_no_second_one(chat_tokenizers):
    """A prompt rendered to plain text by the caller (no RenderedPrompt mark) that begins with the BOS token is
    encoded without special tokens too; other text still gets BOS from the tokenizer."""
    from alignlib.data import encode_prompt

    tok = chat_tokenizers["with_bos"]
    text = "review the pizza :"
    with_bos = encode_prompt(tok, text, None)
    assert with_bos[0] == tok.bos_token_id and with_bos.count(tok.bos_token_id) == 1
    assert encode_prompt(tok, tok.bos_token + text, None) == with_bos
    assert encode_prompt(tok, text, None, add_special_tokens=False) == with_bos[1:]


def _chat_jsonl(path: Path, world, n: int = 6) -> Path:
    path.write_text("".join(json.dumps({"prompt": _chat(world, i)}) + "\n" for i in range(n)))
    return path


@pytest.mark.parametrize("method", ["grpo", "online_dpo"])
def test_train_reads_conversational_prompts_from_jsonl(tmp_path, pocket_reviews, reviews_world, chat_tokenizers,
                                                       method):
    """Two steps of `train` on a JSONL file of conversational prompts: finite history, moved weights, and every
    prompt the reward saw is a rendered one of the file."""
    model, _ = pocket_reviews
    tok = chat_tokenizers["with_bos"]
    data = _chat_jsonl(tmp_path / "chat.jsonl", reviews_world)
    seen = []

    def reward(prompts, responses):
        seen.extend(prompts)
        return reviews_world.gold_reward(prompts, responses)

    cfg = TrainConfig(method=method, dataset=str(data), output_dir=str(tmp_path / method), max_steps=2,
                      per_device_train_batch_size=2, samples_per_prompt=2, max_new_tokens=6, learning_rate=1e-3,
                      judge="reward", save_steps=0, progress=False, logging_steps=0)
    result = train(cfg, model=copy.deepcopy(model), tokenizer=tok, reward_fn=reward)
    assert [r["step"] for r in result.history] == [1, 2]
    assert all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in result.history)
    assert any(not torch.equal(p, q) for p, q in zip(result.model.parameters(), model.parameters()))
    rendered = set(online_prompts(cfg, None, tok))
    assert seen and all(isinstance(p, RenderedPrompt) and p in rendered for p in seen)
    assert all(p.startswith(tok.bos_token) and not p.startswith(2 * tok.bos_token) for p in rendered)


def test_cli_trains_grpo_on_a_conversational_jsonl(tmp_path, pocket_reviews, reviews_world, chat_tokenizers):
    """`python -m alignlib train --method grpo --dataset chat.jsonl` with a model whose tokenizer has a chat
    template exits 0; with the pocket tokenizer (no template) it stops with exit 2 naming the chat template."""
    model, _ = pocket_reviews
    folder = tmp_path / "chat_pocket"
    model.save_pretrained(folder)
    chat_tokenizers["with_bos"].save_pretrained(folder)
    data = _chat_jsonl(tmp_path / "chat.jsonl", reviews_world)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")

    def cli(model_name: str, out: str):
        return subprocess.run([sys.executable, "-m", "alignlib", "train", "--method", "grpo", "--dataset", str(data),
                               "--model", model_name, "--world", "reviews", "--max_steps", "1",
                               "--per_device_train_batch_size", "2", "--samples_per_prompt", "2",
                               "--max_new_tokens", "6", "--output_dir", str(tmp_path / out), "--no_eval",
                               "--progress", "false"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

    proc = cli(str(folder), "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in json.loads((tmp_path / "run" / "history.json").read_text())] == [1]
    proc = cli("pocket", "bad")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "chat template" in proc.stderr
    assert not (tmp_path / "bad" / "final").exists()


def test_bad_conversational_prompts_raise_clear_errors(tmp_path, pocket_reviews, reviews_world, chat_tokenizers):
    """No chat template, mixed formats, empty or ill-formed messages: DataError naming the problem and the row."""
    model, plain = pocket_reviews
    tok = chat_tokenizers["with_bos"]
    cfg = TrainConfig(method="grpo", output_dir=str(tmp_path / "x"), progress=False)
    chats = [{"prompt": _chat(reviews_world, i)} for i in range(3)]
    with pytest.raises(DataError, match="chat template"):
        online_prompts(cfg, chats, plain)
    with pytest.raises(DataError, match="chat template"):
        OnlineGroups(lambda: model, plain, [c["prompt"] for c in chats], reward_fn=reviews_world.gold_reward,
                     samples_per_prompt=2, per_device=2, accumulation=1, world_size=1, seed=0)
    mixed = chats[:2] + [{"prompt": "review the pizza :"}]
    for tokenizer in (tok, None):  # refused before any tokenizer is needed, too
        with pytest.raises(DataError, match=r"row 0 is a list of messages but row 2 is text"):
            online_prompts(cfg, mixed, tokenizer)
    with pytest.raises(DataError, match=r"row 1.*empty list of messages"):
        online_prompts(cfg, [chats[0], {"prompt": []}], tok)
    with pytest.raises(DataError, match=r"row 2.*message 0.*'role'"):
        online_prompts(cfg, chats[:2] + [{"prompt": [{"content": "review the pizza :"}]}], tok)
    with pytest.raises(DataError, match=r"row 1.*text or a list of messages"):
        render_prompts(tok, ["review the pizza :", 7])
    # train stops on the tokenizer without a template before it samples anything
    with pytest.raises(DataError, match="chat template"):
        train(cfg, model=copy.deepcopy(model), tokenizer=plain, dataset=chats)


def test_a_reward_model_renders_conversational_prompts_with_its_own_template(chat_tokenizers, pocket_reviews,
                                                                            reviews_world):
    """A reward model whose tokenizer has another chat template scores the messages as *its* template renders them,
    not the policy's text; with the policy's own tokenizer the two agree, and plain text is scored as given."""
    from transformers import AutoModelForSequenceClassification

    from alignlib.pocket import pocket_dir
    from alignlib.reward_model import RewardModel

    torch.manual_seed(0)
    rm_model = AutoModelForSequenceClassification.from_pretrained(pocket_dir("reviews") / "sft", num_labels=1)
    messages = [_chat(reviews_world, i) for i in range(4)]
    responses = ["the food was great ."] * 4
    policy_side = render_prompts(chat_tokenizers["with_bos"], messages)  # what the sampler hands the reward fn
    own = RewardModel(rm_model, chat_tokenizers["no_bos"])
    expected = own.raw_scores(render_prompts(chat_tokenizers["no_bos"], messages), responses)
    assert torch.allclose(own.raw_scores(policy_side, responses), expected)
    as_text = own.raw_scores([str(p) for p in policy_side], responses)  # the mark lost: scored as the given text
    assert not torch.allclose(as_text, expected)
    same = RewardModel(rm_model, chat_tokenizers["with_bos"])
    assert torch.allclose(same.raw_scores(policy_side, responses),
                          same.raw_scores([str(p) for p in policy_side], responses))


def test_reward_model_is_normalised_on_the_rendered_training_prompts(tmp_path, pocket_reviews, reviews_world,
                                                                    chat_tokenizers, monkeypatch):
    """--reward RM_FOLDER with conversational training prompts: the normalisation scores 8 samples of π_ref on each
    rendered training prompt (the text the reward model sees in training), and shift/scale are their mean and std;
    with text prompts it still uses the world's train split. `train` hands its rendered prompts over."""
    from collections import Counter
    from types import SimpleNamespace

    from transformers import AutoModelForSequenceClassification

    from alignlib.loop import resolve_reward
    from alignlib.pocket import pocket_dir
    from alignlib.reward_model import RewardModel

    model, plain = pocket_reviews
    tok = chat_tokenizers["with_bos"]
    torch.manual_seed(0)
    rm_dir = tmp_path / "rm"
    AutoModelForSequenceClassification.from_pretrained(pocket_dir("reviews") / "sft", num_labels=1).save_pretrained(rm_dir)
    plain.save_pretrained(rm_dir)
    scored, raw_scores = [], RewardModel.raw_scores

    def recording(self, prompts, responses):
        scored.append(list(prompts))
        return raw_scores(self, prompts, responses)

    monkeypatch.setattr(RewardModel, "raw_scores", recording)
    cfg = TrainConfig(method="grpo", reward=str(rm_dir), max_new_tokens=6, seed=0, output_dir=str(tmp_path / "run"),
                      max_steps=1, per_device_train_batch_size=2, samples_per_prompt=2, save_steps=0, progress=False,
                      logging_steps=0)
    data = _chat_jsonl(tmp_path / "chat.jsonl", reviews_world)
    rendered = online_prompts(cfg, str(data), tok)
    device = SimpleNamespace(device=torch.device("cpu"))

    rm = resolve_reward(cfg, tok, model, device, rendered)
    assert len(scored) == 1 and Counter(scored[0]) == Counter({p: 8 for p in rendered})
    assert all(isinstance(p, RenderedPrompt) for p in scored[0])
    expected = sample(model, tok, [p for p in rendered for _ in range(8)], max_new_tokens=6, seed=cfg.seed + 17)
    raw = raw_scores(rm, expected.prompts, expected.texts)
    assert rm.shift == pytest.approx(raw.mean().item()) and rm.scale == pytest.approx(raw.std().item())

    scored.clear()  # text prompts (the default path): the world's train split, as before
    rm_text = resolve_reward(cfg, plain, model, device, online_prompts(cfg, None, plain))
    assert Counter(scored[0]) == Counter({p: 8 for p in reviews_world.prompts("train")})
    assert not any(isinstance(p, RenderedPrompt) for p in scored[0]) and rm_text.shift != rm.shift

    scored.clear()  # the loop passes its rendered prompts: its first scoring is this normalisation
    train(cfg, model=copy.deepcopy(model), tokenizer=tok, dataset=str(data))
    assert Counter(scored[0]) == Counter({p: 8 for p in rendered}) and len(scored) > 1


def test_normalisation_prompts_are_distinct_and_capped(reviews_world):
    """Conversational training prompts normalise the reward model once each, at most NORMALISATION_PROMPTS of them,
    evenly spread over the data; text prompts (or none) give the world's train split."""
    from alignlib.loop import NORMALISATION_PROMPTS, normalisation_prompts

    chats = [RenderedPrompt(f"<bos>review the {i} :", [{"role": "user", "content": str(i)}]) for i in range(3000)]
    assert normalisation_prompts(reviews_world, chats[:5] * 3) == chats[:5]
    capped = normalisation_prompts(reviews_world, chats)
    assert len(capped) == NORMALISATION_PROMPTS == len(set(capped)) and capped[0] is chats[0]
    assert capped[-1] in chats[-3:] and all(isinstance(p, RenderedPrompt) for p in capped)
    train_split = reviews_world.prompts("train")
    assert normalisation_prompts(reviews_world) == train_split
    assert normalisation_prompts(reviews_world, ["review the pizza :"]) == train_split


def test_gold_judgement_reads_the_world_question_inside_rendered_prompts(chat_tokenizers):
    """Gold reward (loop), oracle judge (online pairs) and self-play preferences score a rendered chat prompt as
    the world's own question inside it: the tutor world cannot parse the rendering itself."""
    from types import SimpleNamespace

    from alignlib.loop import resolve_reward
    from alignlib.selfplay import _world
    from alignlib.worlds import get_world

    tutor = get_world("tutor")
    questions = tutor.prompts("eval")[:4]
    rendered = render_prompts(chat_tokenizers["with_bos"], [
        [{"role": "system", "content": "you are a tutor ."}, {"role": "user", "content": q}] for q in questions])
    answers = ["first the ones : 7 + 8 = 15 . your turn !", "the answer is 85 .", "", "hint : start with the ones ."]
    with pytest.raises(ValueError, match="not a tutor-world question"):
        tutor.gold_reward(rendered, answers)

    reward = resolve_reward(TrainConfig(method="grpo", world="tutor"), None, None, None)
    assert reward(rendered, answers) == tutor.gold_reward(questions, answers)
    judge = judge_by_oracle(tutor)
    flipped = answers[::-1]
    assert judge(rendered, answers, flipped, 3) == tutor.prefer(questions, answers, flipped, seed=3, label_noise=0.0)
    world = _world(SimpleNamespace(config=TrainConfig(method="nash_md", world="tutor")))
    assert list(world.preference_probability(rendered, answers, flipped)) == \
        list(tutor.preference_probability(questions, answers, flipped))
    assert world.name == tutor.name and judge(questions, answers, flipped, 3) == judge(rendered, answers, flipped, 3)
