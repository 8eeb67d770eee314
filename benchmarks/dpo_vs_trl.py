"""DPO training speed, alignlib vs TRL's DPOTrainer, on the same model, data, batch and loss.

    python benchmarks/dpo_vs_trl.py                       # pocket model, CPU
    python benchmarks/dpo_vs_trl.py --model llama-100m    # random-init ~100M Llama (from config, no download)
    python benchmarks/dpo_vs_trl.py --model llama-0.5b --bf16 --steps 4 12   # on one GPU

What is compared. Both sides train the same policy (a copy each) against the
same frozen reference, with AdamW at a constant learning rate, gradient
clipping at 1, β = 0.1, sigmoid DPO loss, one process. Every step's batch is
the *whole* data set (`--pairs` pairs), so both sides see identical batches
whatever their shuffling, and their per-step losses must agree (printed: the
largest difference over the run). That makes "equal loss" checkable.

How it is timed: `_harness.py` (fresh subprocesses, the difference of a short
and a long run, sides alternating, median of `--repeats` rounds). Peak memory:
CUDA max allocated on a GPU, max RSS on CPU.

Output: seconds per step for each side, the throughput ratio TRL time / our
time (> 1: we are faster), prompt+completion tokens per second, the loss
agreement, and on a known GPU the model-FLOPs utilisation (MFU).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import MODELS, build, machine, make_parser, round_line, rounds  # noqa: F401  (MODELS, build: also for importers)

# dense bf16 peak FLOP/s per GPU, for the model-FLOPs utilisation (MFU) line (datasheet numbers)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "T4": 65e12}


def model_flops_per_step(n_params: int, tokens: int) -> float:
    """FLOPs of one DPO step: policy forward + backward (6·N per token) and reference forward (2·N per token)."""
    return 8 * n_params * tokens


def rows_for(world, pairs: int):
    ex = world.sft_examples(2 * pairs, seed=0)
    # a leading space: TRL joins prompt and completion as strings (see tests/test_trl_parity.py)
    return [{"prompt": ex[i].prompt, "chosen": " " + ex[i].completion, "rejected": " " + ex[i + pairs].completion}
            for i in range(pairs)]


def run_one(side: str, model_name: str, steps: int, pairs: int, bf16: bool, out: str) -> None:
    """Train `steps` steps with one side; write elapsed seconds, losses and peak memory to `out` (JSON)."""
    import warnings

    import torch

    warnings.simplefilter("ignore")
    policy, ref, tokenizer, world = build(model_name, bf16)
    rows = rows_for(world, pairs)
    use_cpu = not torch.cuda.is_available()
    common = dict(learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                  max_grad_norm=1.0, beta=0.1, per_device_train_batch_size=pairs, max_steps=steps, seed=0,
                  bf16=bf16, use_cpu=use_cpu)
    with tempfile.TemporaryDirectory() as tmp:
        if side == "alignlib":
            from alignlib import TrainConfig, train

            config = TrainConfig(method="dpo", output_dir=tmp, save_steps=0, logging_steps=0, progress=False,
                                 **common)
            t0 = time.perf_counter()
            result = train(config, policy, tokenizer, reference_model=ref, dataset=[dict(r, chosen=r["chosen"].strip(),
                                                                                          rejected=r["rejected"].strip())
                                                                                     for r in rows])
            elapsed = time.perf_counter() - t0
            losses = [h["loss"] for h in result.history]
        else:
            import datasets
            import trl

            args = trl.DPOConfig(output_dir=tmp, report_to="none", logging_steps=1, save_strategy="no",
                                 disable_tqdm=True, dataloader_num_workers=0, **common)
            trainer = trl.DPOTrainer(model=policy, ref_model=ref, args=args,
                                     train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
            t0 = time.perf_counter()
            trainer.train()
            elapsed = time.perf_counter() - t0
            losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux → MiB
    n_tokens = sum(len(tokenizer(r["prompt"] + r["chosen"]).input_ids) + len(tokenizer(r["prompt"] + r["rejected"]).input_ids)
                   for r in rows)
    Path(out).write_text(json.dumps({"elapsed": elapsed, "losses": losses, "peak_mib": peak, "tokens": n_tokens,
                                     "params": sum(p.numel() for p in ref.parameters())}))


def main() -> None:
    parser = make_parser(__doc__, "--pairs", "pairs per step (= the whole data set)", 16, [4, 24], bf16=True)
    args = parser.parse_args()
    if args._child:
        return run_one(args._child, args.model, args._steps, args.pairs, args.bf16, args._out)

    import torch

    s1, s2 = args.steps
    child_flags = ["--model", args.model, "--pairs", str(args.pairs)] + (["--bf16"] if args.bf16 else [])
    per_step = {"alignlib": [], "trl": []}
    peaks = {"alignlib": [], "trl": []}
    loss_diff, tokens = 0.0, None
    for r, runs in enumerate(rounds(__file__, args, child_flags)):
        for side, long in runs.items():
            per_step[side].append(long["per_step"])
            peaks[side].append(long["peak_mib"])
            tokens, n_params = long["tokens"], long["params"]
        diffs = [abs(a - b) for a, b in zip(runs["alignlib"]["losses"], runs["trl"]["losses"])]
        loss_diff = max(loss_diff, max(diffs))
        print(round_line(r, runs, 4), flush=True)
    ours, theirs = statistics.median(per_step["alignlib"]), statistics.median(per_step["trl"])
    device, machine_line = machine()
    print(f"\nmodel={args.model} pairs/step={args.pairs} steps={s1}->{s2} repeats={args.repeats} bf16={args.bf16}")
    print(machine_line)
    print(f"alignlib: {ours:.4f} s/step ({tokens / ours:,.0f} tokens/s), peak {max(peaks['alignlib']):.0f} MiB")
    print(f"TRL     : {theirs:.4f} s/step ({tokens / theirs:,.0f} tokens/s), peak {max(peaks['trl']):.0f} MiB")
    print(f"throughput ratio TRL time / alignlib time = {theirs / ours:.2f}  (> 1: alignlib is faster)")
    print(f"largest per-step loss difference over {s2} steps: {loss_diff:.2e}")
    peak = next((v for k, v in PEAK_BF16.items() if torch.cuda.is_available() and k in device), None)
    if peak is not None:
        flops = model_flops_per_step(n_params, tokens)
        print(f"MFU (8·N·tokens per step, {n_params / 1e6:.0f}M parameters, peak {peak / 1e12:.0f} TFLOP/s): "
              f"alignlib {flops / ours / peak:.1%}, TRL {flops / theirs / peak:.1%}")


if __name__ == "__main__":
    main()
