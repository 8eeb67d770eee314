"""`python -m alignlib`: bad flags give exit code 2 and a one-line reason (no traceback); a tiny run works.

Every test runs the CLI as a subprocess (`sys.executable -m alignlib`) from the repository root,
with the caller's environment (so ALIGNLIB_CACHE, and the cached pocket model, carry over).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "alignlib", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2, no traceback, and every needle (case-insensitive) in stderr."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for needle in needles:
        assert needle.lower() in proc.stderr.lower(), (needle, proc.stderr[-2000:])


def test_help_exits_zero():
    """`--help` prints the usage and the commands, exit 0; so does `train --help`, listing the flags."""
    proc = run_cli("--help")
    assert proc.returncode == 0 and "train" in proc.stdout and "build-pocket" in proc.stdout
    proc = run_cli("train", "--help")
    assert proc.returncode == 0 and "--learning_rate" in proc.stdout and "--beta" in proc.stdout


def test_unknown_command_lists_valid_commands():
    proc = run_cli("trian", "--method", "dpo")
    assert_clean_error(proc, "unknown command", "trian", "train", "evaluate", "build-pocket")


def test_unknown_method_lists_valid_methods():
    proc = run_cli("train", "--method", "foo")
    assert_clean_error(proc, "unknown method", "'foo'", "dpo", "sft")


def test_unknown_world_lists_valid_worlds():
    proc = run_cli("train", "--world", "moon")
    assert_clean_error(proc, "unknown world", "'moon'", "reviews")


def test_load_in_4bit_without_lora_says_add_lora():
    proc = run_cli("train", "--load_in_4bit")
    assert_clean_error(proc, "--load_in_4bit", "--lora")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_load_in_4bit_with_lora_on_cpu_needs_cuda():
    """On a CPU-only machine QLoRA is refused up front with a message about CUDA / the GPU (dashed flags work)."""
    proc = run_cli("train", "--load-in-4bit", "--lora", "--max_steps", "1", "--model", "pocket",
                   "--world", "reviews")
    assert_clean_error(proc, "CUDA", "GPU")


def test_dataset_missing_rejected_names_the_column(tmp_path):
    """A --dataset JSONL without `rejected` stops with exit 2, naming the column and the file."""
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "review the pizza :", "chosen": "the pizza was good ."}) + "\n")
    proc = run_cli("train", "--method", "dpo", "--dataset", str(path), "--max_steps", "1", "--model", "pocket",
                   "--world", "reviews", "--output_dir", str(tmp_path / "run"), "--progress", "false")
    assert_clean_error(proc, "rejected", str(path), "row 0")
    assert not (tmp_path / "run" / "final").exists()


def test_tiny_dpo_run_succeeds_and_saves_a_loadable_model(tmp_path, pocket_reviews):
    """`train --method dpo --max_steps 2 ...` exits 0, writes final/ that AutoModelForCausalLM loads, a 2-step
    history, and weights that moved away from the SFT pocket model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    proc = run_cli("train", "--method", "dpo", "--max_steps", "2", "--num_examples", "64",
                   "--per_device_train_batch_size", "4", "--output_dir", str(out), "--no_eval",
                   "--progress", "false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = out / "final"
    assert final.is_dir()
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    history = json.loads((out / "history.json").read_text())
    assert [r["step"] for r in history] == [1, 2]
    assert all(0 < r["loss"] < 10 for r in history)

    sft_model, sft_tokenizer = pocket_reviews
    assert tokenizer.get_vocab() == sft_tokenizer.get_vocab()
    trained, sft = model.state_dict(), sft_model.state_dict()
    assert trained.keys() == sft.keys()
    assert any(not torch.equal(trained[k], sft[k]) for k in trained)
    ids = torch.tensor([tokenizer("review the pizza : the pizza was good .")["input_ids"]])
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()


def test_build_pocket_takes_the_model_size_as_flags(tmp_path):
    """`build-pocket --hidden_size 32 ...` builds a model of that size into ALIGNLIB_CACHE and names the folder."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", ALIGNLIB_CACHE=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "alignlib", "build-pocket", "--world", "reviews", "--hidden_size", "32",
                           "--num_hidden_layers", "1", "--intermediate_size", "64", "--pretrain_steps", "2",
                           "--sft_steps", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder = Path(proc.stdout.split()[0])
    assert folder.parent == tmp_path
    config = json.loads((folder / "sft" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]) == (32, 1, 64)
    proc = run_cli("build-pocket", "--world", "nowhere")
    assert_clean_error(proc, "unknown world", "reviews")


def test_reward_method_trains_a_reward_model_and_skips_policy_evaluation(tmp_path):
    """`train --method reward` saves a one-output sequence classifier and says why it is not sampled."""
    proc = run_cli("train", "--method", "reward", "--max_steps", "2", "--num_examples", "64",
                   "--per_device_train_batch_size", "4", "--output_dir", str(tmp_path / "rm"), "--no_progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no gold evaluation" in proc.stdout
    config = json.loads((tmp_path / "rm" / "final" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and len(config["id2label"]) == 1


# a chat template whose words are in the pocket vocabulary (the pocket tokenizer is word-level)
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% if m['role'] == 'assistant' %}"
                 "{{ eos_token }}{% endif %}{% endfor %}")


def test_train_evaluates_on_the_kind_of_prompt_it_trained_on(tmp_path, pocket_reviews, monkeypatch):
    """After training on conversational prompts, the gold evaluation samples the world's eval prompts as user
    messages rendered by the model's chat template and judges each as the world's text prompt; after training on
    the world's text prompts (the default), it evaluates on those text prompts, as before."""
    import copy

    import alignlib.evaluate as evaluate
    from alignlib.cli import main
    from alignlib.data import RenderedPrompt, render_prompts
    from alignlib.worlds import ReviewsWorld, get_world
    from alignlib.worlds.base import ChatPromptJudge

    model, tokenizer = pocket_reviews
    chat_tokenizer = copy.deepcopy(tokenizer)
    chat_tokenizer.chat_template = CHAT_TEMPLATE
    folder = tmp_path / "chat_pocket"
    model.save_pretrained(folder)
    chat_tokenizer.save_pretrained(folder)
    world = get_world("reviews")
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": p}]}) + "\n"
                            for p in world.prompts("train")[:6]))
    seen, evaluate_policy = {}, evaluate.evaluate_policy

    def recording(policy, reference, tok, judge, prompts=None, **kwargs):
        seen.update(prompts=prompts, judge=judge)
        return evaluate_policy(policy, reference, tok, judge, prompts=prompts, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_policy", recording)
    common = ["--method", "grpo", "--max_steps", "1", "--per_device_train_batch_size", "2", "--samples_per_prompt", "2",
              "--max_new_tokens", "6", "--eval_samples_per_prompt", "1", "--progress", "false", "--save_steps", "0"]
    eval_prompts = world.prompts("eval")

    assert main(["train", *common, "--model", str(folder), "--dataset", str(data),
                 "--output_dir", str(tmp_path / "chat")]) == 0
    assert all(isinstance(p, RenderedPrompt) for p in seen["prompts"])
    assert [p.messages for p in seen["prompts"]] == [[{"role": "user", "content": p}] for p in eval_prompts]
    assert seen["prompts"] == render_prompts(chat_tokenizer, [[{"role": "user", "content": p}] for p in eval_prompts])
    assert isinstance(seen["judge"], ChatPromptJudge)
    assert json.loads((tmp_path / "chat" / "eval.json").read_text())["n"] == len(eval_prompts)

    # `evaluate --chat` does the same for any saved model
    assert main(["evaluate", "--model", str(folder), "--reference", str(folder), "--samples_per_prompt", "1",
                 "--max_new_tokens", "6", "--chat", "true"]) == 0
    assert [p.messages for p in seen["prompts"]] == [[{"role": "user", "content": p}] for p in eval_prompts]
    assert isinstance(seen["judge"], ChatPromptJudge)
    assert main(["evaluate", "--model", str(folder), "--reference", str(folder), "--samples_per_prompt", "1",
                 "--max_new_tokens", "6"]) == 0
    assert seen["prompts"] is None and isinstance(seen["judge"], ReviewsWorld)

    assert main(["train", *common, "--output_dir", str(tmp_path / "text")]) == 0
    assert seen["prompts"] is None and isinstance(seen["judge"], ReviewsWorld)  # world.prompts("eval"), as before
    assert json.loads((tmp_path / "text" / "eval.json").read_text())["n"] == len(eval_prompts)

    # the judge reads the world's own prompt out of the rendering: the tutor world cannot parse the rendered text
    tutor = get_world("tutor")
    questions = tutor.prompts("eval")[:4]
    rendered = render_prompts(chat_tokenizer, [[{"role": "user", "content": q}] for q in questions])
    answers = ["first the ones : 7 + 8 = 15 . your turn !", "the answer is 85 .", "", "hint : start with the ones ."]
    judge = ChatPromptJudge(tutor)
    assert judge.gold_reward(rendered, answers) == tutor.gold_reward(questions, answers)
    assert judge.gold_verdict(rendered, answers, answers[::-1]) == tutor.gold_verdict(questions, answers, answers[::-1])
    assert [judge.is_grammatical(r, a) for r, a in zip(rendered, answers)] == \
        [tutor.is_grammatical(q, a) for q, a in zip(questions, answers)]
    with pytest.raises(ValueError, match="not a tutor-world question"):
        tutor.gold_reward(rendered, answers)
