"""Train with `alignlib.loop.train` under any launcher; write the history as JSON on the main process.

    accelerate launch --multi_gpu --num_processes 2 ... tests/scripts/ddp_train.py OUT.json --flag value ...
    torchrun --nproc_per_node 2 tests/scripts/ddp_train.py OUT.json --flag value ...
    python tests/scripts/ddp_train.py OUT.json --flag value ...

OUT.json receives {"world_size": processes that trained, "history": per-step records,
"output_dir": ...}. Every other argument is a `TrainConfig` flag, as on the CLI.
Used by tests/test_train_invariants.py (the DDP invariant).

Fault injection: with DDP_TRAIN_SLOW_SAVE_S=<seconds> in the environment, every
process but the main one sleeps that long before each `Accelerator.save_state`
(a slow rank, as under load or with a slow filesystem), which shows whether a
checkpoint is complete before the main process publishes it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: alignlib needs no install


def main(argv: list[str]) -> int:
    from transformers import HfArgumentParser

    from alignlib.config import TrainConfig
    from alignlib.loop import train

    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    out, rest = Path(argv[0]), argv[1:]
    delay = float(os.environ.get("DDP_TRAIN_SLOW_SAVE_S", "0"))
    if delay > 0 and int(os.environ.get("RANK", "0")) != 0:
        import time

        from accelerate import Accelerator

        save_state = Accelerator.save_state

        def slow_save_state(self, *args, **kwargs):
            time.sleep(delay)
            return save_state(self, *args, **kwargs)

        Accelerator.save_state = slow_save_state
    (config,) = HfArgumentParser(TrainConfig).parse_args_into_dataclasses(rest)
    result = train(config)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        record = {"world_size": result.world_size, "history": result.history, "output_dir": str(result.output_dir),
                  "env_world_size": int(os.environ.get("WORLD_SIZE", "1"))}
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
