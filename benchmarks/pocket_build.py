"""Time the pocket model: a cold build of the default reviews model, and warm loads from the cache.

    python benchmarks/pocket_build.py [--world reviews] [--warm-loads 3]

The cold build goes into a fresh temporary cache (ALIGNLIB_CACHE is pointed there for
this process only), so an existing cache is neither used nor touched. The warm time is
the `load_pocket` call alone, after `import transformers` and a first load have been
done, averaged over the warm loads. Numbers depend on the machine and on its load
(torch threads compete with other processes); the script prints both.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="reviews")
    parser.add_argument("--warm-loads", type=int, default=3)
    args = parser.parse_args()

    cache = Path(tempfile.mkdtemp(prefix="alignlib-bench-"))
    os.environ["ALIGNLIB_CACHE"] = str(cache)
    try:
        t0 = time.perf_counter()
        import torch
        import transformers  # noqa: F401  (imported before timing the loads)

        from alignlib.pocket import PocketConfig, build_pocket, load_pocket, pocket_dir

        import_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        build_pocket(args.world, PocketConfig(), pocket_dir(args.world))
        build_s = time.perf_counter() - t0

        load_pocket(args.world)  # first load: fills OS file caches, lazy imports inside transformers
        warm = []
        for _ in range(args.warm_loads):
            t0 = time.perf_counter()
            model, _ = load_pocket(args.world)
            warm.append(time.perf_counter() - t0)

        load1, load5 = os.getloadavg()[:2]
        print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
              f"load average {load1:.1f} (1 min) / {load5:.1f} (5 min)")
        print(f"pocket model: {sum(p.numel() for p in model.parameters()):,} parameters")
        print(f"import torch + transformers + alignlib.pocket: {import_s:.2f} s")
        print(f"cold build ({args.world}, default config):   {build_s:.1f} s")
        print(f"warm load_pocket, mean of {len(warm)}:         {sum(warm) / len(warm) * 1000:.0f} ms "
              f"({', '.join(f'{w * 1000:.0f}' for w in warm)} ms)")
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
