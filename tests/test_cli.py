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
