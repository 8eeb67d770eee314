"""What the alignlib-vs-TRL speed benchmarks share: models, command line, and the timing protocol.

Timing protocol. Each measurement runs the benchmark script itself in a fresh
subprocess (`--_child SIDE --_steps S --_out FILE`, so peak memory is the
process's own) at two lengths, S1 and S2 steps; the time per step is
(t(S2) − t(S1)) / (S2 − S1), which removes model loading, data preparation and
saving from both sides. The sides alternate (ours, TRL, then TRL, ours, ...)
for `--repeats` rounds, so slow drifts of a shared machine hit both; a script
reports the median.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

SIDES = ("alignlib", "trl")

MODELS = {  # random-init architectures for the larger runs (tokenizer: the pocket world's)
    "llama-100m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2048),
    "llama-0.5b": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


def build(model_name: str, bf16: bool, perturb_reference: bool = True):
    """Return (policy, reference, tokenizer, world) — identical in every subprocess (seeded)."""
    import copy

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignlib.pocket import load_pocket
    from alignlib.worlds import get_world

    world = get_world("reviews")
    pocket, tokenizer = load_pocket("reviews")
    if model_name == "pocket":
        model = pocket
    else:
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          **MODELS[model_name])
        model = LlamaForCausalLM(cfg)
    if bf16:
        model = model.to(torch.bfloat16)
    # the reference differs from the policy so the loss is not the trivial log 2 at step 1
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters() if perturb_reference else ():
            p.add_((0.02 * torch.randn(p.shape, generator=g)).to(p.dtype))
    return model, ref, tokenizer, world


def make_parser(doc: str, size_flag: str, size_help: str, size_default: int, steps_default: list[int],
                bf16: bool = False) -> argparse.ArgumentParser:
    """Return the benchmarks' command line: --model, the batch-size flag, --steps S1 S2, --repeats,
    [--bf16], --verbose, and the hidden flags of a child run."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", default="pocket", choices=["pocket", *MODELS])
    parser.add_argument(size_flag, type=int, default=size_default, help=size_help)
    parser.add_argument("--steps", type=int, nargs=2, default=steps_default, metavar=("S1", "S2"))
    parser.add_argument("--repeats", type=int, default=3)
    if bf16:
        parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="show the subprocesses' warnings and progress")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    return parser


def measure(script: str, side: str, steps: int, child_flags: list[str], verbose: bool) -> dict:
    """Run `script` as a child training `steps` steps with `side`; return the JSON it wrote to `--_out`."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, script, "--_child", side, "--_steps", str(steps), "--_out", out, *child_flags]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=None if verbose else subprocess.DEVNULL)
    result = json.loads(Path(out).read_text())
    os.unlink(out)
    return result


def rounds(script: str, args, child_flags: list[str]) -> Iterator[dict[str, dict]]:
    """Yield, for each of `args.repeats` rounds, {side: the long run's result plus its "per_step" seconds}.

    The sides alternate their order from round to round; "per_step" is the difference
    of the S2-step and S1-step runs' elapsed times over S2 − S1.
    """
    s1, s2 = args.steps
    for r in range(args.repeats):
        out = {}
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            short = measure(script, side, s1, child_flags, args.verbose)
            long = measure(script, side, s2, child_flags, args.verbose)
            out[side] = dict(long, per_step=(long["elapsed"] - short["elapsed"]) / (s2 - s1))
        yield out


def round_line(r: int, result: dict[str, dict], digits: int) -> str:
    """The progress line printed after round `r` (0-based)."""
    return (f"round {r + 1}: alignlib {result['alignlib']['per_step']:.{digits}f} s/step, "
            f"trl {result['trl']['per_step']:.{digits}f} s/step")


def machine() -> tuple[str, str]:
    """Return (device name, the "machine: ..." line of a report)."""
    import platform

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return device, f"machine: {platform.node()} {device}, torch {torch.__version__}, threads {torch.get_num_threads()}"
