"""Interrupted runs resume from their latest checkpoint and end where an uninterrupted run ends.

* For real: the CLI is killed with SIGKILL after its step-10 checkpoint, rerun
  with the same command (it prints "resumed from"), and its history.json and
  final weights are compared with an uninterrupted run of the same command.
* In process: a KeyboardInterrupt raised inside the step at step 7 of 12
  (checkpoints every 4 steps, linear schedule, gradient accumulation), then
  `train` again resumes from checkpoint-4.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alignlib.config import TrainConfig
from alignlib.loop import train

REPO = Path(__file__).resolve().parents[1]
PAIR_COLUMNS = ("prompt", "chosen", "rejected")
TOL = 1e-6


def max_history_diff(h1: list[dict], h2: list[dict]) -> float:
    """Largest |difference| of any metric at any step; the steps and metric names must match."""
    assert [r["step"] for r in h1] == [r["step"] for r in h2], \
        f"steps differ: {[r['step'] for r in h1]} vs {[r['step'] for r in h2]}"
    worst = 0.0
    for r1, r2 in zip(h1, h2):
        assert set(r1) == set(r2), f"step {r1['step']}: metrics differ: {sorted(set(r1) ^ set(r2))}"
        for k in r1:
            worst = max(worst, abs(r1[k] - r2[k]))
    return worst


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), f"different parameters: {sorted(a.keys() ^ b.keys())}"
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = output_dir / "final" / "model.safetensors"
    assert path.exists(), f"no final model in {output_dir}: {sorted(p.name for p in output_dir.iterdir())}"
    return load_file(path)


# ------------------------------------------------------ the CLI, killed for real
STEPS, SAVE_EVERY, KILL_AFTER = 40, 5, 10


def cli_command(output_dir: Path) -> list[str]:
    return [sys.executable, "-m", "alignlib", "train", "--method", "dpo", "--world", "reviews",
            "--max_steps", str(STEPS), "--save_steps", str(SAVE_EVERY), "--lr_scheduler_type", "linear",
            "--learning_rate", "2e-4", "--num_examples", "128", "--per_device_train_batch_size", "4",
            "--output_dir", str(output_dir), "--no_eval", "--no_progress"]


def cli_env() -> dict[str, str]:
    # one thread per process: the runs below overlap, and identical thread counts keep them bit-comparable
    path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def run_cli(output_dir: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cli_command(output_dir), cwd=REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"exit code {proc.returncode}\nstdout:\n{proc.stdout[-5000:]}\n" \
                                 f"stderr:\n{proc.stderr[-10000:]}"
    return proc


@pytest.fixture(scope="module")
def pocket_cached(pocket_reviews):
    """Build the pocket model here, once, so the subprocesses below only load it."""
    return pocket_reviews


def test_cli_killed_with_sigkill_resumes_to_the_same_result(pocket_cached, tmp_path):
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    # The uninterrupted reference run goes on alongside; it has its own folder and process.
    ref_proc = subprocess.Popen(cli_command(reference), cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    log_path = tmp_path / "interrupted.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cli_command(interrupted), cwd=REPO, env=cli_env(), stdout=log,
                                stderr=subprocess.STDOUT, text=True)
        marker = interrupted / f"checkpoint-{KILL_AFTER}" / "trainer_state.json"
        deadline = time.monotonic() + 900
        try:
            while not marker.exists():
                if proc.poll() is not None:
                    pytest.fail(f"the run ended (exit code {proc.returncode}) before its step-{KILL_AFTER} "
                                f"checkpoint appeared:\n{log_path.read_text()[-5000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"no {marker} after 900 s:\n{log_path.read_text()[-5000:]}")
                time.sleep(0.02)
            if proc.poll() is not None:
                pytest.fail(f"the run finished all {STEPS} steps (exit code {proc.returncode}) before it could be "
                            "killed; make it longer (more --max_steps) so the kill lands mid-run")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed but ended with {proc.returncode}"
    assert not (interrupted / "final").exists() and not (interrupted / "history.json").exists(), \
        "the killed run had already finished: the kill came too late to test resuming"
    done = sorted(int(p.name.split("-")[1]) for p in interrupted.glob("checkpoint-*")
                  if (p / "trainer_state.json").exists())
    assert done and KILL_AFTER <= done[-1] < STEPS, f"checkpoints after the kill: {done}"

    resumed = run_cli(interrupted)
    assert "resumed from" in resumed.stdout + resumed.stderr, \
        f"the rerun did not resume:\nstdout:\n{resumed.stdout[-3000:]}\nstderr:\n{resumed.stderr[-3000:]}"
    assert f"checkpoint-{done[-1]}" in resumed.stdout + resumed.stderr, "it did not resume from the latest checkpoint"

    try:
        ref_out, ref_err = ref_proc.communicate(timeout=900)
    finally:
        if ref_proc.poll() is None:
            ref_proc.kill()
            ref_proc.wait()
    assert ref_proc.returncode == 0, f"reference run failed:\nstdout:\n{ref_out[-3000:]}\nstderr:\n{ref_err[-5000:]}"
    assert "resumed from" not in ref_out + ref_err

    h_resumed = json.loads((interrupted / "history.json").read_text())
    h_reference = json.loads((reference / "history.json").read_text())
    assert [r["step"] for r in h_reference] == list(range(1, STEPS + 1))
    history_diff = max_history_diff(h_resumed, h_reference)
    weight_diff = max_weight_diff(final_weights(interrupted), final_weights(reference))
    print(f"CLI SIGKILL after checkpoint-{done[-1]}: max history diff {history_diff:.3g}, "
          f"max weight diff {weight_diff:.3g}")
    assert history_diff <= TOL, f"resumed history differs from the uninterrupted one by {history_diff}"
    assert weight_diff <= TOL, f"resumed final weights differ from the uninterrupted ones by {weight_diff}"
    # the CLI ends by printing the last history record
    final = resumed.stdout[resumed.stdout.rindex('{\n "final"'):]
    assert json.loads(final)["final"] == h_resumed[-1]


# ------------------------------------------------------ in process, interrupted
@pytest.fixture(scope="module")
def pair_rows(pocket_reviews):
    from alignlib.rollout import world_dataset

    model, tokenizer = pocket_reviews
    rows = world_dataset(TrainConfig(num_examples=128, seed=0), "pairs", model, tokenizer)
    return [{c: r[c] for c in PAIR_COLUMNS} for r in rows]


def small_config(output_dir: Path) -> TrainConfig:
    return TrainConfig(method="dpo", world="reviews", max_steps=12, save_steps=4, learning_rate=2e-4,
                       lr_scheduler_type="linear", per_device_train_batch_size=4, gradient_accumulation_steps=2,
                       logging_steps=0, progress=False, output_dir=str(output_dir))


def test_keyboard_interrupt_then_train_again_resumes(pair_rows, tmp_path, monkeypatch, capsys):
    from alignlib import methods

    reference = train(small_config(tmp_path / "reference"), dataset=pair_rows)
    assert "resumed from" not in capsys.readouterr().out

    original = methods.METHODS["dpo"]
    calls = []

    def interrupt_at_step_7(ctx, batch):
        calls.append(1)
        if len(calls) == 6 * 2 + 2:  # step 7, second micro-batch (after one backward)
            raise KeyboardInterrupt
        return original.step(ctx, batch)

    out = tmp_path / "interrupted"
    with monkeypatch.context() as m:
        m.setitem(methods.METHODS, "dpo", dataclasses.replace(original, step=interrupt_at_step_7))
        with pytest.raises(KeyboardInterrupt):
            train(small_config(out), dataset=pair_rows)
    assert methods.METHODS["dpo"] is original
    assert (out / "checkpoint-4" / "trainer_state.json").exists()
    assert not (out / "checkpoint-8").exists() and not (out / "final").exists()

    resumed = train(small_config(out), dataset=pair_rows)
    printed = capsys.readouterr().out
    assert "resumed from" in printed and "checkpoint-4" in printed, printed

    history_diff = max_history_diff(resumed.history, reference.history)
    weight_diff = max_weight_diff(resumed.model.state_dict(), reference.model.state_dict())
    disk_diff = max_weight_diff(final_weights(out), final_weights(tmp_path / "reference"))
    print(f"in-process KeyboardInterrupt at step 7: max history diff {history_diff:.3g}, "
          f"max weight diff {weight_diff:.3g} (saved: {disk_diff:.3g})")
    assert [r["step"] for r in resumed.history] == list(range(1, 13))
    assert history_diff <= TOL, f"resumed history differs from the uninterrupted one by {history_diff}"
    assert weight_diff <= TOL and disk_diff <= TOL, f"final weights differ by {weight_diff} / {disk_diff}"
    assert json.loads((out / "history.json").read_text()) == resumed.history
    # the linear schedule went on from where it stopped, not from the start
    lrs = [r["learning_rate"] for r in resumed.history]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] == pytest.approx(0.0)


# ------------------------------------------------------ checkpoint rotation
@pytest.mark.parametrize("limit", [
    1,
    0,
])
def test_rotation_keeps_the_latest_checkpoint(pair_rows, tmp_path, limit):
    out = tmp_path / "run"
    try:
        cfg = dataclasses.replace(small_config(out), max_steps=4, save_steps=1, gradient_accumulation_steps=1,
                                  save_total_limit=limit)
    except ValueError:  # refusing a limit that keeps no checkpoint is a fine answer too
        return
    train(cfg, dataset=pair_rows)
    kept = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if (p / "trainer_state.json").exists())
    assert kept and kept[-1] == 4, f"save_total_limit={limit}: checkpoints left {kept}"
    assert len(kept) <= max(limit, 1), f"save_total_limit={limit}: checkpoints left {kept}"
