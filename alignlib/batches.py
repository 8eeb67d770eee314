"""Where a training step's batches come from: the one seam between the loop and the data.

The loop in `train.py` asks a *batch source* for one process's micro-batch at
(step, micro-step) and never looks inside. A batch source has two methods:

    micro_batch(step, micro, rank) -> dict of tensors   (what the method's step reads)
    tokens_per_micro_batch(step) -> float               (normaliser of token-averaged losses)

and must be a pure function of (step, micro, rank) given its seed, so that a
resumed run sees exactly the batches an uninterrupted one would have seen.

`OfflineBatches` serves a fixed, tokenised data set: SFT demonstrations,
preference pairs, or ranked lists (any number of completions per prompt;
`collate_examples` lays them out completion-major). Online methods add a
source that samples from the current policy inside `micro_batch` (seeded by
seed, step and rank), labels or scores what it sampled, and returns the same
kind of dict, with extra tensors (rewards, old log-probs, values) as needed.
"""

from __future__ import annotations

import torch

from .data import TokenizedExample, collate_examples


class IndexStream:
    """Deterministic example order: epoch e is a permutation seeded by (seed, e).

    Step s consumes positions [s·G, (s+1)·G) of the concatenated epochs, where
    G is the global batch. Any step's batch can be recomputed, so resuming
    needs nothing but the step number, and the order does not depend on the
    number of processes.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._cache = n, seed, {}

    def _epoch(self, e: int) -> list[int]:
        if e not in self._cache:
            gen = torch.Generator().manual_seed(self.seed * 100003 + e)
            self._cache = {e: torch.randperm(self.n, generator=gen).tolist()}
        return self._cache[e]

    def take(self, start: int, count: int) -> list[int]:
        return [self._epoch(pos // self.n)[pos % self.n] for pos in range(start, start + count)]


class OfflineBatches:
    """Micro-batches of a fixed data set, sharded over processes and accumulation steps.

    The global batch of a step is per_device × processes × accumulation
    consecutive examples of the `IndexStream`; micro-step m of process r gets
    slice (m · processes + r). Splitting the same global batch differently
    therefore only regroups the same examples.
    """

    def __init__(self, examples: list[TokenizedExample], per_device: int, accumulation: int, world_size: int,
                 pad_token_id: int, seed: int, device=None):
        self.examples, self.per_device, self.accumulation = examples, per_device, accumulation
        self.world_size, self.pad_token_id, self.device = world_size, pad_token_id, device
        self.stream = IndexStream(len(examples), seed)

    def indices(self, step: int, micro: int, rank: int) -> list[int]:
        global_batch = self.per_device * self.world_size * self.accumulation
        start = step * global_batch + (micro * self.world_size + rank) * self.per_device
        return self.stream.take(start, self.per_device)

    def micro_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        rows = [self.examples[i] for i in self.indices(step, micro, rank)]
        return {k: v.to(self.device) for k, v in collate_examples(rows, self.pad_token_id).items()}

    def tokens_per_micro_batch(self, step: int) -> float:
        """Completion tokens predicted in the step's global batch / (micro-steps × processes)."""
        total = 0
        for micro in range(self.accumulation):
            for rank in range(self.world_size):
                for i in self.indices(step, micro, rank):
                    ex = self.examples[i]
                    # with an empty prompt the first completion token has no context and is not predicted
                    total += sum(len(c) for c in ex.completions) - (len(ex.prompt_ids) == 0) * len(ex.completions)
        return total / (self.accumulation * self.world_size)


@torch.no_grad()
def precompute_reference_logps(examples: list[TokenizedExample], reference, policy, pad_token_id: int, device,
                               batch_size: int = 64) -> None:
    """Store log π_ref of every completion of every example in `example.ref_logps`, in place.

    Offline data never changes, so the reference's log-probs can be computed
    once, before training, instead of in every step; the reference model can
    then be freed (TRL's `precompute_ref_log_probs`). Computed in eval mode,
    exactly as the step would compute them.
    """
    from .logprobs import sequence_logprobs

    with reference.context(policy) as ref:
        was_training = ref.training
        ref.eval()
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate_examples(chunk, pad_token_id).items()}
            logps, _, _ = sequence_logprobs(ref, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
            k = len(chunk[0].completions)
            per_example = logps.float().cpu().view(k, len(chunk)).T.tolist()  # rows are completion-major
            for example, values in zip(chunk, per_example):
                example.ref_logps = values
        ref.train(was_training)
