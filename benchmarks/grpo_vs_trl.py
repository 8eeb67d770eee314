"""Online training speed, alignlib's GRPO vs TRL's GRPOTrainer: sampling, scoring and one update per step.

    python benchmarks/grpo_vs_trl.py                      # pocket model, CPU
    python benchmarks/grpo_vs_trl.py --model llama-100m   # random-init ~100M Llama (from config, no download)

Both sides start from the same policy and reference, answer the same prompts
of the reviews world with k = 4 samples each (temperature 1, no top-k/top-p, at
most 32 new tokens), score them with the world's gold reward, and take one
GRPO step ("grpo" loss normalisation, β = 0.04 so both compute the reference's
log-probs, AdamW at a constant learning rate, clipping at 1). A step of each
side therefore does the same work: generate B·k completions, two forward
passes (policy, reference), one backward pass.

Samples differ between the sides (different random streams), so per-step
losses are not comparable; the mean gold score of the first step is printed
as a sanity check that both sample from the same policy (they should agree
within sampling noise). Timing as in `dpo_vs_trl.py` (see `_harness.py`): fresh
subprocesses, the difference of a short and a long run, sides alternating, median of repeats.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import build, machine, make_parser, round_line, rounds

K, MAX_NEW_TOKENS, BETA, LR = 4, 32, 0.04, 1e-6


def run_one(side: str, model_name: str, steps: int, prompts_per_step: int, out: str) -> None:
    import warnings

    import torch

    warnings.simplefilter("ignore")
    policy, ref, tokenizer, world = build(model_name, bf16=False, perturb_reference=False)
    prompts = world.prompts("train")[: prompts_per_step * 64]
    use_cpu = not torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        if side == "alignlib":
            from alignlib import TrainConfig, train

            config = TrainConfig(method="grpo", output_dir=tmp, save_steps=0, logging_steps=0, progress=False,
                                 samples_per_prompt=K, max_new_tokens=MAX_NEW_TOKENS, beta=BETA, learning_rate=LR,
                                 per_device_train_batch_size=prompts_per_step, max_steps=steps, use_cpu=use_cpu)
            t0 = time.perf_counter()
            result = train(config, policy, tokenizer, reference_model=ref, dataset=[{"prompt": p} for p in prompts],
                           reward_fn=world.gold_reward)
            elapsed = time.perf_counter() - t0
            first_score = result.history[0]["score"]
        else:
            import datasets
            import trl

            def gold(prompts, completions, **kwargs):
                return world.gold_reward(prompts, completions)

            args = trl.GRPOConfig(output_dir=tmp, report_to="none", logging_steps=1, save_strategy="no",
                                  disable_tqdm=True, per_device_train_batch_size=prompts_per_step * K,
                                  num_generations=K, max_completion_length=MAX_NEW_TOKENS, temperature=1.0,
                                  top_p=1.0, top_k=0, beta=BETA, loss_type="grpo", learning_rate=LR,
                                  lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, max_steps=steps,
                                  use_cpu=use_cpu, bf16=False, seed=0)
            # TRL builds its reference from the model's folder: give it one (the same weights as ours)
            policy.save_pretrained(f"{tmp}/model")
            tokenizer.save_pretrained(f"{tmp}/model")
            trainer = trl.GRPOTrainer(model=f"{tmp}/model", reward_funcs=gold, args=args, processing_class=tokenizer,
                                      train_dataset=datasets.Dataset.from_list([{"prompt": p} for p in prompts]))
            t0 = time.perf_counter()
            trainer.train()
            elapsed = time.perf_counter() - t0
            logs = [h for h in trainer.state.log_history if "reward" in h]
            first_score = logs[0]["reward"] if logs else float("nan")
    Path(out).write_text(json.dumps({"elapsed": elapsed, "first_score": first_score}))


def main() -> None:
    parser = make_parser(__doc__, "--prompts", "prompts per step (×4 samples)", 8, [2, 8])
    args = parser.parse_args()
    if args._child:
        return run_one(args._child, args.model, args._steps, args.prompts, args._out)

    s1, s2 = args.steps
    per_step = {"alignlib": [], "trl": []}
    scores = {"alignlib": [], "trl": []}
    for r, runs in enumerate(rounds(__file__, args, ["--model", args.model, "--prompts", str(args.prompts)])):
        for side, long in runs.items():
            per_step[side].append(long["per_step"])
            scores[side].append(long["first_score"])
        print(round_line(r, runs, 3), flush=True)
    ours, theirs = statistics.median(per_step["alignlib"]), statistics.median(per_step["trl"])
    print(f"\nmodel={args.model} prompts/step={args.prompts} × k={K} steps={s1}->{s2} repeats={args.repeats}")
    print(machine()[1])
    print(f"alignlib GRPO: {ours:.3f} s/step; first-step mean gold score {statistics.fmean(scores['alignlib']):+.3f}")
    print(f"TRL GRPO     : {theirs:.3f} s/step; first-step mean gold score {statistics.fmean(scores['trl']):+.3f}")
    print(f"throughput ratio TRL time / alignlib time = {theirs / ours:.2f}  (> 1: alignlib is faster)")


if __name__ == "__main__":
    main()
