"""Invariants of the one training loop (alignlib/loop.py).

* The loss curve and the final weights depend on the global batch only:
  per-device batch × gradient accumulation (one process), and per-device batch
  × processes (DDP, two gloo processes on CPU launched by `accelerate launch`).
* A NaN loss stops the run with NonFiniteLossError after saving the last good state.
* Bad configurations fail early with messages that name the valid choices.
* A checkpoint of a different run is not silently resumed.

Runs use the reviews pocket model on 128 generated preference pairs, 2–8
optimizer steps each.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignlib.config import TrainConfig
from alignlib.loop import NonFiniteLossError, train

REPO = Path(__file__).resolve().parents[1]
DDP_SCRIPT = REPO / "tests" / "scripts" / "ddp_train.py"
PAIR_COLUMNS = ("prompt", "chosen", "rejected")


# ----------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def pair_rows(pocket_reviews):
    """128 oracle-labelled preference pairs sampled from the pocket model (what `train` would generate)."""
    from alignlib.rollout import world_dataset

    model, tokenizer = pocket_reviews
    rows = world_dataset(TrainConfig(num_examples=128, seed=0), "pairs", model, tokenizer)
    assert len(rows) >= 64, f"only {len(rows)} pairs generated"
    return [{c: r[c] for c in PAIR_COLUMNS} for r in rows]


def config(output_dir, **overrides) -> TrainConfig:
    """A small, quiet DPO run; `overrides` replace any field."""
    fields = dict(method="dpo", world="reviews", max_steps=8, learning_rate=2e-4, per_device_train_batch_size=8,
                  gradient_accumulation_steps=1, save_steps=0, logging_steps=0, progress=False,
                  output_dir=str(output_dir))
    fields.update(overrides)
    return TrainConfig(**fields)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), f"different parameters: {sorted(a.keys() ^ b.keys())}"
    return max((a[k] - b[k]).abs().max().item() for k in a)


def max_history_diff(h1: list[dict], h2: list[dict], keys=None) -> float:
    """Largest |difference| over steps and metrics (all shared metrics unless `keys`)."""
    assert len(h1) == len(h2), f"histories have {len(h1)} and {len(h2)} steps"
    worst = 0.0
    for r1, r2 in zip(h1, h2):
        assert r1["step"] == r2["step"]
        assert set(r1) == set(r2), f"step {r1['step']}: metrics differ: {sorted(set(r1) ^ set(r2))}"
        for k in keys or r1:
            worst = max(worst, abs(r1[k] - r2[k]))
    return worst


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------- accumulation invariance
def test_gradient_accumulation_leaves_the_trajectory_unchanged(pair_rows, tmp_path):
    """8×1, 4×2 and 2×4 (per-device batch × accumulation) see the same examples per step → same run."""
    runs = {}
    for b, accum in [(8, 1), (4, 2), (2, 4)]:
        result = train(config(tmp_path / f"b{b}", per_device_train_batch_size=b, gradient_accumulation_steps=accum),
                       dataset=pair_rows)
        assert len(result.history) == 8
        runs[(b, accum)] = (result.history, weights(result.model))

    base_history, base_weights = runs[(8, 1)]
    assert all(math.isfinite(r["loss"]) for r in base_history)
    assert max_weight_diff(base_weights, runs[(8, 1)][1]) == 0.0
    # the run must have moved, or equality below would prove nothing
    assert len({round(r["loss"], 6) for r in base_history}) > 1, "the loss never changed"
    for key in [(4, 2), (2, 4)]:
        history, w = runs[key]
        loss_diff = max_history_diff(base_history, history, keys=("loss", "rewards/margins", "grad_norm",
                                                                  "learning_rate"))
        weight_diff = max_weight_diff(base_weights, w)
        print(f"accumulation {key} vs (8, 1): max loss/metric diff {loss_diff:.3g}, max weight diff {weight_diff:.3g}")
        assert loss_diff <= 1e-5, f"per-device×accum {key}: history differs from 8×1 by {loss_diff}"
        assert weight_diff <= 1e-5, f"per-device×accum {key}: final weights differ from 8×1 by {weight_diff}"


def test_sft_gradient_accumulation_leaves_the_trajectory_unchanged(pocket_reviews, tmp_path):
    """SFT, 8×1 vs 4×2: the token-mean NLL of a step must not depend on how the step is split."""
    from alignlib.worlds import get_world

    rows = [{"prompt": ex.prompt, "completion": ex.completion}
            for ex in get_world("reviews").sft_examples(64, seed=0)]
    runs = [train(config(tmp_path / f"b{b}", method="sft", max_steps=2, per_device_train_batch_size=b,
                         gradient_accumulation_steps=a), dataset=rows) for b, a in [(8, 1), (4, 2)]]
    loss_diff = max_history_diff(runs[0].history, runs[1].history, keys=("loss",))
    weight_diff = max_weight_diff(weights(runs[0].model), weights(runs[1].model))
    print(f"SFT accumulation 4×2 vs 8×1: max loss diff {loss_diff:.3g}, max weight diff {weight_diff:.3g}")
    assert loss_diff <= 1e-5 and weight_diff <= 1e-5, (loss_diff, weight_diff)


# ------------------------------------------------------------------- DDP
def launch_ddp(out: Path, flags: list[str], extra_env: dict[str, str] | None = None, processes: int = 2) -> dict:
    """Run tests/scripts/ddp_train.py under `accelerate launch --multi_gpu` (gloo on CPU); return its JSON record."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(DDP_SCRIPT), str(out), *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {}),
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"DDP run timed out after {exc.timeout}s\nstdout:\n{exc.stdout}\nstderr:\n{exc.stderr}")
    log = f"command: {' '.join(cmd)}\nexit code {proc.returncode}\nstdout:\n{proc.stdout[-5000:]}\n" \
          f"stderr:\n{proc.stderr[-10000:]}"
    assert proc.returncode == 0, log
    assert out.exists(), log
    record = json.loads(out.read_text())
    assert record["world_size"] == processes, f"the launcher started {record['world_size']} process(es), " \
                                              f"not {processes}\n{log}"
    record["log"] = log
    return record


def ddp_flags(output_dir: Path, data: Path, steps: int, per_device: int, **more) -> list[str]:
    flags = ["--method", "dpo", "--world", "reviews", "--max_steps", str(steps), "--learning_rate", "2e-4",
             "--lr_scheduler_type", "linear", "--dataset", str(data), "--per_device_train_batch_size",
             str(per_device), "--save_steps", "0", "--logging_steps", "0", "--no_progress",
             "--output_dir", str(output_dir)]
    for k, v in more.items():
        flags += [f"--{k}", str(v)]
    return flags


def assert_complete_checkpoints(output_dir: Path, processes: int):
    """Every published checkpoint holds every process's state; no half-written folder is left behind."""
    leftovers = sorted(p.name for p in output_dir.glob(".tmp-checkpoint-*"))
    assert not leftovers, f"unpublished checkpoint folders left behind: {leftovers} " \
                          f"(holding {[sorted(f.name for f in (output_dir / n).iterdir()) for n in leftovers]})"
    ckpts = sorted(output_dir.glob("checkpoint-*"))
    assert ckpts
    for ckpt in ckpts:
        names = {p.name for p in ckpt.iterdir()}
        missing = [f"random_states_{r}.pkl" for r in range(processes) if f"random_states_{r}.pkl" not in names]
        assert not missing, f"{ckpt.name} was published without {missing}: {sorted(names)}"


@pytest.fixture(scope="module")
def pair_file(pair_rows, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.json"
    path.write_text(json.dumps(pair_rows))
    return path


def test_two_ddp_processes_match_one_process(pair_file, tmp_path):
    """2 gloo processes × per-device 4 = 1 process × per-device 8: same loss at every step, same weights."""
    steps = 8
    single = train(config(tmp_path / "single", per_device_train_batch_size=8, max_steps=steps,
                          dataset=str(pair_file), lr_scheduler_type="linear"))

    ddp_dir = tmp_path / "ddp"
    ddp = launch_ddp(tmp_path / "ddp.json", ddp_flags(ddp_dir, pair_file, steps, per_device=4))
    loss_diff = max_history_diff(single.history, ddp["history"], keys=("loss",))
    other_diff = max_history_diff(single.history, ddp["history"], keys=("grad_norm", "rewards/margins",
                                                                          "learning_rate"))
    from safetensors.torch import load_file

    ddp_weights = load_file(ddp_dir / "final" / "model.safetensors")
    single_weights = {k: v for k, v in weights(single.model).items() if k in ddp_weights}
    weight_diff = max_weight_diff(single_weights, {k: v.float() for k, v in ddp_weights.items()})
    print(f"DDP(2×4) vs 1×8: max loss diff {loss_diff:.3g}, other metrics {other_diff:.3g}, "
          f"weights {weight_diff:.3g}")
    assert len({round(r["loss"], 6) for r in single.history}) > 1, "the loss never changed"
    assert loss_diff <= 1e-4, f"DDP loss curve differs from the 1-process one by {loss_diff}\n{ddp['log']}"
    assert other_diff <= 1e-4, f"DDP grad_norm/margins/lr differ from the 1-process run by {other_diff}"
    assert weight_diff <= 1e-4, f"DDP final weights differ from the 1-process ones by {weight_diff}"
    assert_complete_checkpoints(ddp_dir, processes=2)


def test_ddp_checkpoint_is_published_only_when_every_process_has_written(pair_file, tmp_path):
    """A slow non-main process (injected delay before its save_state) must still end up in the checkpoint."""
    ddp_dir = tmp_path / "ddp"
    launch_ddp(tmp_path / "ddp.json", ddp_flags(ddp_dir, pair_file, steps=2, per_device=4, save_steps=1),
               extra_env={"DDP_TRAIN_SLOW_SAVE_S": "3"})
    assert_complete_checkpoints(ddp_dir, processes=2)


# -------------------------------------------------------------- NaN loss
def test_nan_loss_raises_and_keeps_the_last_good_state(pair_rows, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from alignlib import methods

    original = methods.METHODS["dpo"]
    calls = []

    def nan_from_fourth_call(ctx, batch):
        loss, metrics = original.step(ctx, batch)
        calls.append(1)
        if len(calls) >= 4:
            loss = loss * float("nan")
            metrics = {**metrics, "loss": float("nan")}
        return loss, metrics

    monkeypatch.setitem(methods.METHODS, "dpo", dataclasses.replace(original, step=nan_from_fourth_call))
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError) as info:
        train(config(out, max_steps=10, per_device_train_batch_size=4), dataset=pair_rows)
    message = str(info.value)
    assert "step 4" in message, message
    assert "learning_rate" in message, message
    assert len(calls) == 4, f"training went on after the NaN: {len(calls)} step calls"

    ckpts = [p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    assert ckpts, f"no checkpoint saved in {out}: {sorted(p.name for p in out.iterdir())}"
    latest = max(ckpts, key=lambda p: int(p.name.split("-")[1]))
    assert str(latest) in message or latest.name in message, f"message does not name {latest}: {message}"
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["step"] == 3 and len(state["history"]) == 3, state
    assert all(math.isfinite(r["loss"]) for r in state["history"])
    files = list(latest.glob("*.safetensors")) + list(latest.glob("pytorch_model*.bin"))
    assert files, f"no model weights in {latest}: {sorted(p.name for p in latest.iterdir())}"
    for f in files:
        tensors = load_file(f) if f.suffix == ".safetensors" else torch.load(f)
        assert tensors
        for name, t in tensors.items():
            assert torch.isfinite(t).all(), f"{f.name}: {name} has non-finite values"

    # recovery as the message suggests: continue from that checkpoint with a lower learning rate
    monkeypatch.setitem(methods.METHODS, "dpo", original)
    lower = config(out, max_steps=10, per_device_train_batch_size=4, learning_rate=1e-5,
                   resume_from_checkpoint=str(latest))
    resumed = train(lower, dataset=pair_rows)
    assert [r["step"] for r in resumed.history] == list(range(1, 11))
    assert resumed.history[:3] == state["history"]
    assert all(r["learning_rate"] == pytest.approx(1e-5) for r in resumed.history[3:])


# ------------------------------------------------------------ config errors
def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        TrainConfig(method="nope")
    assert "nope" in str(info.value) and "dpo" in str(info.value) and "sft" in str(info.value)


def test_unknown_world_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        TrainConfig(world="nope")
    assert "nope" in str(info.value) and "reviews" in str(info.value)


@pytest.mark.parametrize("field", ["max_steps", "per_device_train_batch_size", "gradient_accumulation_steps"])
def test_non_positive_counts_are_refused(field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: 0})


def test_4bit_without_lora_asks_for_lora():
    with pytest.raises(ValueError, match="--lora"):
        TrainConfig(load_in_4bit=True)


# ------------------------------------------------ resuming a different run
def test_changed_learning_rate_is_not_resumed(pair_rows, tmp_path):
    out = tmp_path / "run"
    first = train(config(out, max_steps=4, save_steps=2, per_device_train_batch_size=4), dataset=pair_rows)
    assert len(first.history) == 4 and (out / "checkpoint-4").exists()

    with pytest.raises(ValueError) as info:
        train(config(out, max_steps=4, save_steps=2, per_device_train_batch_size=4, learning_rate=1e-3),
              dataset=pair_rows)
    message = str(info.value)
    assert "learning_rate" in message and "--overwrite_output_dir" in message, message
    assert "max_steps" not in message, f"a resumable field is reported as a difference: {message}"

    fresh = train(config(out, max_steps=4, save_steps=2, per_device_train_batch_size=4, learning_rate=1e-3,
                         overwrite_output_dir=True), dataset=pair_rows)
    assert [r["step"] for r in fresh.history] == [1, 2, 3, 4]
    assert all(r["learning_rate"] == pytest.approx(1e-3) for r in fresh.history)
    assert fresh.history[1]["loss"] != pytest.approx(first.history[1]["loss"], abs=1e-7), \
        "the overwritten run repeated the old one"
    saved = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert saved["config"]["learning_rate"] == pytest.approx(1e-3)
    assert json.loads((out / "history.json").read_text()) == fresh.history
