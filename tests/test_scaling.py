"""Scaling flags: FSDP2 over two CPU processes matches one process; LoRA's reference equals a frozen copy.

The FSDP run uses the shipped `configs/accelerate/cpu_fsdp2.yaml` (gloo), so the
config a reader launches on GPUs differs from the tested one only in device and
process count.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignlib.config import TrainConfig
from alignlib.logprobs import sequence_logprobs
from alignlib.loop import train
from alignlib.models import frozen_copy

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "ddp_train.py"


@pytest.fixture(scope="module")
def pair_file(reviews_world, tmp_path_factory):
    ex = reviews_world.sft_examples(64, seed=0)
    rows = [{"prompt": ex[i].prompt, "chosen": ex[i].completion, "rejected": ex[i + 32].completion}
            for i in range(32)]
    path = tmp_path_factory.mktemp("data") / "pairs.json"
    path.write_text(json.dumps(rows))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_fsdp2_on_two_cpu_processes_matches_one_process(pair_file, tmp_path, lora):
    """FSDP2 (2 × per-device 4) and 1 process × 8: same DPO loss at every step, same final weights; with
    --lora too (adapters sharded with the base, the reference = adapters off on every shard)."""
    steps = 4 if not lora else 2
    lr = "2e-4" if not lora else "1e-3"
    flags = ["--method", "dpo", "--world", "reviews", "--max_steps", str(steps), "--learning_rate", lr,
             "--dataset", str(pair_file), "--save_steps", "0", "--logging_steps", "0", "--no_progress"]
    flags += ["--lora"] if lora else []
    out, fsdp_dir = tmp_path / "fsdp.json", tmp_path / "fsdp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "configs" / "accelerate" / "cpu_fsdp2.yaml"), "--main_process_port", str(_free_port()),
           str(SCRIPT), str(out), *flags, "--per_device_train_batch_size", "4", "--output_dir", str(fsdp_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    record = json.loads(out.read_text())
    assert record["world_size"] == 2, f"the launcher started {record['world_size']} process(es), not 2"

    single = train(TrainConfig(method="dpo", world="reviews", max_steps=steps, learning_rate=float(lr),
                               dataset=str(pair_file), per_device_train_batch_size=8, save_steps=0, lora=lora,
                               logging_steps=0, progress=False, output_dir=str(tmp_path / "single")))
    losses = [r["loss"] for r in single.history]
    assert len({round(x, 6) for x in losses}) > 1, "the loss never changed"
    diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(single.history, record["history"]))
    assert diff <= 1e-4, f"FSDP2 loss curve differs from 1 process by {diff}"

    if lora:  # the saved adapters are compared through the loss curve (grad norms too)
        norm_diff = max(abs(a["grad_norm"] - b["grad_norm"]) for a, b in zip(single.history, record["history"]))
        assert norm_diff <= 1e-5, f"FSDP2+LoRA gradient norms differ from 1 process by {norm_diff}"
        return
    from safetensors.torch import load_file

    sharded = load_file(fsdp_dir / "final" / "model.safetensors")  # FULL_STATE_DICT: whole tensors
    ours = single.model.state_dict()
    weight_diff = max((sharded[k].float() - ours[k].float()).abs().max().item() for k in sharded)
    print(f"FSDP2(2×4) vs 1×8: max loss diff {diff:.2g}, max weight diff {weight_diff:.2g}")
    assert weight_diff <= 1e-4


def test_lora_reference_equals_a_frozen_copy_log_probs(pocket_reviews, reviews_world, tmp_path):
    """--lora: π_ref is the base with adapters off; its log-probs equal an explicit frozen copy's (≤ 1e-6)."""
    base, tok = pocket_reviews
    explicit = frozen_copy(base)
    ex = reviews_world.sft_examples(64, seed=1)
    rows = [{"prompt": ex[i].prompt, "chosen": ex[i].completion, "rejected": ex[i + 32].completion}
            for i in range(32) if ex[i].completion != ex[i + 32].completion]
    cfg = TrainConfig(method="dpo", lora=True, max_steps=3, learning_rate=1e-2, per_device_train_batch_size=8,
                      output_dir=str(tmp_path / "run"), progress=False, logging_steps=0, save_steps=0)
    result = train(cfg, model=copy.deepcopy(base), tokenizer=tok, dataset=rows)
    assert result.reference.model is None, "with --lora there must be no second model copy"

    from alignlib.data import collate_examples, tokenize_rows

    batch = collate_examples(tokenize_rows(rows[:8], tok, "pairs"), tok.pad_token_id)
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    with torch.no_grad():
        with result.reference.context(result.model) as ref:
            lora_ref, _, _ = sequence_logprobs(ref, *args)
        frozen, _, _ = sequence_logprobs(explicit, *args)
        policy, _, _ = sequence_logprobs(result.model, *args)
    assert (lora_ref - frozen).abs().max().item() <= 1e-6
    assert (policy - frozen).abs().max().item() > 1e-3  # the adapters did train: the check is not vacuous


@pytest.mark.parametrize("loss_type", ["dpo", "ipo"])
def test_precomputed_reference_log_probs_change_nothing(pair_file, tmp_path, loss_type):
    """precompute_ref_log_probs: same DPO/IPO trajectory as computing π_ref every step, and no reference model kept."""
    common = dict(method="dpo", world="reviews", loss_type=loss_type, max_steps=3, learning_rate=2e-4,
                  dataset=str(pair_file), per_device_train_batch_size=8, save_steps=0, logging_steps=0,
                  progress=False)
    plain = train(TrainConfig(output_dir=str(tmp_path / "plain"), **common))
    pre = train(TrainConfig(output_dir=str(tmp_path / "pre"), precompute_ref_log_probs=True, **common))
    assert pre.reference.precomputed and pre.reference.model is None
    diff = max(abs(a[k] - b[k]) for a, b in zip(plain.history, pre.history) for k in ("loss", "rewards/margins"))
    assert len({round(r["loss"], 6) for r in plain.history}) > 1
    assert diff <= 1e-5, f"precomputed reference changed the trajectory by {diff}"


def test_precompute_is_refused_for_online_methods():
    with pytest.raises(ValueError, match="precompute_ref_log_probs"):
        TrainConfig(method="grpo", precompute_ref_log_probs=True)
