"""The one training loop, on `accelerate`, for every method.

    python -m alignlib train ...            one process (CPU or one GPU)
    accelerate launch script/CLI ...        DDP / FSDP / DeepSpeed by config

A method (alignlib.methods) is a loss on a batch plus the kind of data it
reads; a batch source (alignlib.batches) serves each process its micro-batches;
this loop does the rest: gradient accumulation, clipping, checkpoints and
resume, logging.

Invariants (tested): with the same global batch — per-device batch ×
processes × accumulation — the loss curve is the same for 1 or 2 processes;
an interrupted run resumed from its checkpoint ends where an uninterrupted one
does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig
from .batches import OfflineBatches
from .data import DataError, TokenizedExample, load_rows, tokenize_rows
from .methods import METHODS, StepContext
from .models import Reference, add_lora, frozen_copy, load_tokenizer_and_model

STATE_FILE = "trainer_state.json"


class NonFiniteLossError(RuntimeError):
    """Raised when the loss becomes NaN or infinite; the last good state is saved first."""


@dataclass
class TrainResult:
    model: torch.nn.Module  # unwrapped policy (a peft model if --lora)
    tokenizer: Any
    history: list[dict[str, float]]  # one record per optimizer step
    output_dir: Path
    reference: Reference = field(repr=False, default=None)
    world_size: int = 1  # processes that trained it (DDP)


# --------------------------------------------------------------- the data
def prepare_examples(config: TrainConfig, kind: str, tokenizer, policy, dataset=None) -> list[TokenizedExample]:
    """Return tokenised examples from `dataset` (rows, Dataset or path), `config.dataset`, or the world."""
    source = dataset if dataset is not None else config.dataset
    generated = source is None
    if generated:
        from .rollout import world_dataset

        source = world_dataset(config, kind, policy, tokenizer)
    if kind == "lists":
        from .lists import load_list_rows, tokenize_list_rows

        rows, dropped = load_list_rows(source, on_bad="skip" if generated else "raise")
        if any(dropped.values()):
            print(f"dropped {sum(dropped.values())} sampled list(s) that cannot be ranked: {dropped}")
        examples, scores = tokenize_list_rows(rows, tokenizer, config.max_prompt_length, config.max_completion_length)
        for example, row_scores in zip(examples, scores.tolist()):
            example.scores = row_scores
        return examples
    rows = load_rows(source, kind)
    return tokenize_rows(rows, tokenizer, kind, config.max_prompt_length, config.max_completion_length)


def online_prompts(config: TrainConfig, dataset=None, tokenizer=None) -> list[str]:
    """Return the prompts online methods answer: the `prompt` column of the data, else the world's train split.

    Prompts in TRL's conversational format (lists of {"role", "content"} messages) are
    rendered once by `tokenizer`'s chat template with the generation prompt
    (`alignlib.data.render_prompts`); samplers encode them without a second BOS, and
    reward functions and judges receive the rendered text. Without a tokenizer they
    are returned as lists (the batch sources render them).
    """
    from .data import check_prompt_format, render_prompts

    source = dataset if dataset is not None else config.dataset
    if source is None:
        from .worlds import get_world

        return get_world(config.world).prompts("train")
    prompts = [row["prompt"] for row in load_rows(source, "prompts")]
    where = str(source) if isinstance(source, (str, Path)) else "data"
    if tokenizer is None:
        check_prompt_format(prompts, where)  # refuses mixed formats now, before any model is loaded
        return prompts
    return render_prompts(tokenizer, prompts, where)


#: at most this many distinct conversational training prompts (evenly spaced) normalise a reward model
NORMALISATION_PROMPTS = 1024


def normalisation_prompts(world, prompts=None) -> list[str]:
    """Return the prompts a reward model is normalised on: those of training where they are conversational.

    Text prompts (the default path) give the world's train split, as always. Rendered
    conversational prompts (`alignlib.data.RenderedPrompt`, from `online_prompts`) are
    what the reward model scores during training, so the normalisation uses them:
    each distinct one once, at most `NORMALISATION_PROMPTS` of them, evenly spaced.
    """
    from .data import RenderedPrompt

    if prompts is None or not any(isinstance(p, RenderedPrompt) for p in prompts):
        return world.prompts("train")
    distinct = list(dict.fromkeys(prompts))
    if len(distinct) > NORMALISATION_PROMPTS:
        distinct = [distinct[i * len(distinct) // NORMALISATION_PROMPTS] for i in range(NORMALISATION_PROMPTS)]
    return distinct


def resolve_reward(config: TrainConfig, tokenizer, initial_policy, accelerator, prompts=None):
    """Return the reward function named by `config.reward`: the world's gold reward, or a normalised reward model.

    A reward model is normalised to mean 0 / std 1 under samples of the *initial*
    policy (π_ref), 8 per prompt of `normalisation_prompts(world, prompts)` (the
    training prompts where they are conversational, else the world's train split),
    so the normalisation is the same when a run resumes.
    """
    from .worlds import get_world

    world = get_world(config.world)
    if config.reward == "gold":
        from .worlds.base import ChatPromptJudge

        return ChatPromptJudge(world).gold_reward  # reads the world's question inside a rendered chat prompt
    from .reward_model import RewardModel
    from .rollout import sample

    path = Path(config.reward)
    if not (path / "config.json").exists():
        raise ValueError(f"--reward {config.reward}: expected 'gold' or a reward-model folder with a config.json "
                         "(e.g. the final/ folder of `alignlib train --method reward`)")
    rm = RewardModel(str(path))
    rm.model.to(accelerator.device)
    norm = sample(initial_policy, tokenizer, [p for p in normalisation_prompts(world, prompts) for _ in range(8)],
                  max_new_tokens=config.max_new_tokens, seed=config.seed + 17)
    return rm.normalise_under(norm.prompts, norm.texts)


@dataclass
class SourceContext:
    """What a method's online batch source may use (see `Method.source`)."""

    config: TrainConfig
    policy: Any  # callable returning the current (unwrapped) policy
    tokenizer: Any
    prompts: list[str]
    reward_fn: Any
    reference: Reference
    world_size: int
    device: Any

    def common(self) -> dict:
        """Keyword arguments every `_OnlineSource` takes, from the config."""
        c = self.config
        return dict(per_device=c.per_device_train_batch_size, accumulation=c.gradient_accumulation_steps,
                    world_size=self.world_size, seed=c.seed, device=self.device, max_new_tokens=c.max_new_tokens,
                    temperature=c.temperature)


def online_source(ctx: SourceContext, method):
    """Return the batch source that samples the method's online data from `ctx.policy()`.

    A method may bring its own source (`Method.source`, a factory taking the
    `SourceContext`); otherwise its data kind picks one of the shared sources.
    """
    from .online import OnlineGroups, OnlinePairs, judge_by_oracle, judge_by_reward
    from .worlds import get_world

    config = ctx.config
    if method.source is not None:
        return method.source(ctx)
    if method.data == "online_groups":
        return OnlineGroups(ctx.policy, ctx.tokenizer, ctx.prompts, reward_fn=ctx.reward_fn,
                            samples_per_prompt=config.samples_per_prompt, **ctx.common())
    if method.data != "online_pairs":
        raise ValueError(f"method {method.name!r} reads online data {method.data!r} but names no batch source")
    judge = (judge_by_oracle(get_world(config.world), config.label_noise) if config.judge == "oracle"
             else judge_by_reward(ctx.reward_fn))
    return OnlinePairs(ctx.policy, ctx.tokenizer, ctx.prompts, judge=judge, reward_fn=ctx.reward_fn, **ctx.common())


# ----------------------------------------------------------- checkpoints
def _checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.glob("checkpoint-*") if (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _save_checkpoint(accelerator, output_dir: Path, step: int, history, config: TrainConfig, scheduler) -> Path:
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every process has written its part (RNG state, shards) before publishing
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), tmp / "scheduler_alignlib.pt")
        state = {"step": step, "history": history, "config": dataclasses.asdict(config)}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)  # a checkpoint is either complete or absent
        for old in _checkpoints(output_dir)[: -config.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# ------------------------------------------------------------------- loop
def train(config: TrainConfig, model=None, tokenizer=None, reference_model=None, dataset=None,
          reward_fn=None) -> TrainResult:
    """Train with `config`; return the trained policy, its tokenizer and the per-step history.

    model/tokenizer: an in-memory policy (default: load `config.model`).
    reference_model: an in-memory π_ref (default: a frozen copy of the initial policy,
    or the adapters-off base with --lora). dataset: rows, a `datasets.Dataset`
    or a path (default: `config.dataset`, else generated from the world); online
    methods read only its `prompt` column. reward_fn: online methods' reward,
    `f(prompts, responses) -> scores` (default: from `config.reward`).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    method = METHODS[config.method]
    accelerator = Accelerator(cpu=config.use_cpu or not torch.cuda.is_available(),
                              mixed_precision="bf16" if config.bf16 else "no")
    output_dir = Path(config.output_dir)
    if config.overwrite_output_dir and accelerator.is_main_process and output_dir.exists():
        for old in output_dir.glob("*checkpoint-*"):
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    set_seed(config.seed)

    # models
    if model is None:
        with accelerator.main_process_first():  # the first process builds the pocket cache, the others load it
            model, tokenizer = load_tokenizer_and_model(config.model, config.world, config.bf16, config.load_in_4bit,
                                                        kind=method.model_kind)
    elif tokenizer is None:
        raise ValueError("pass the tokenizer together with an in-memory model")
    reference = Reference()
    if method.needs_reference and not config.lora:
        reference = Reference(reference_model if reference_model is not None else frozen_copy(model))
    sampler = reference.model or model
    if method.model_kind != "causal_lm" and dataset is None and config.dataset is None:
        # generated data is sampled from the world's policy, which a reward model cannot do
        with accelerator.main_process_first():
            sampler, _ = load_tokenizer_and_model(config.model, config.world)
    online = method.data.startswith("online")
    examples = None if online else prepare_examples(config, method.data, tokenizer, sampler, dataset)
    if online:
        prompts = online_prompts(config, dataset, tokenizer)
        reward_fn = reward_fn or resolve_reward(config, tokenizer, reference.model or model, accelerator, prompts)
    del sampler
    if config.precompute_ref_log_probs:  # one pass of π_ref over the data now, none per step; then free π_ref
        from .batches import precompute_reference_logps

        ref_model = (reference.model or model).to(accelerator.device)  # with --lora: the base before adapters
        precompute_reference_logps(examples, Reference(ref_model), None, tokenizer.pad_token_id, accelerator.device)
        reference = Reference(precomputed=True)
        del ref_model
    if config.lora:
        model = add_lora(model, config.lora_r, config.lora_alpha, quantized=config.load_in_4bit)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if method.wrap_model is not None:  # e.g. PPO: policy + critic as one module (one optimizer, checkpoint, DDP)
        model = method.wrap_model(model, config)
    model.train()

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=config.learning_rate, weight_decay=config.weight_decay)
    # The scheduler is stepped by hand once per optimizer step: accelerate's
    # prepared scheduler would step once per process and change the schedule with the launcher.
    scheduler = get_scheduler(config.lr_scheduler_type, optimizer, num_warmup_steps=config.warmup_steps,
                              num_training_steps=config.max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    reference.to(accelerator.device)

    # resume
    start_step, history = 0, []
    if config.resume_from_checkpoint:
        ckpt = Path(config.resume_from_checkpoint)
        if not (ckpt / STATE_FILE).exists():
            raise ValueError(f"--resume_from_checkpoint {ckpt}: no {STATE_FILE} there; pass a checkpoint-N folder")
    else:
        found = _checkpoints(output_dir) if config.resume else []
        ckpt = found[-1] if found else None
    if ckpt is not None:
        state = json.loads((ckpt / STATE_FILE).read_text())
        diffs = config.differences(state["config"])
        if diffs and not config.resume_from_checkpoint:  # an explicit checkpoint may change the recipe on purpose
            raise ValueError(
                f"{output_dir} holds a checkpoint of a different run ({'; '.join(diffs)}). Use another "
                "--output_dir, --overwrite_output_dir to start afresh, or --resume_from_checkpoint PATH to continue "
                "from a checkpoint with the new settings."
            )
        accelerator.load_state(str(ckpt))
        scheduler.load_state_dict(torch.load(ckpt / "scheduler_alignlib.pt"))
        if diffs:  # e.g. a lower learning rate after a divergence
            scheduler.base_lrs = [config.learning_rate for _ in scheduler.base_lrs]
            for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
                group["initial_lr"] = config.learning_rate
                group["lr"] = config.learning_rate * factor(scheduler.last_epoch)
            accelerator.print(f"continuing from {ckpt} with changed settings: {'; '.join(diffs)}")
        start_step, history = state["step"], state["history"]
        accelerator.print(f"resumed from {ckpt} at step {start_step}")

    accum, world_size = config.gradient_accumulation_steps, accelerator.num_processes
    if online:
        batches = online_source(SourceContext(config, lambda: accelerator.unwrap_model(model), tokenizer, prompts,
                                              reward_fn, reference, world_size, accelerator.device), method)
    else:
        batches = OfflineBatches(examples, config.per_device_train_batch_size, accum, world_size,
                                 tokenizer.pad_token_id, config.seed, accelerator.device)
    ctx = StepContext(model=model, reference=reference, config=config)
    unit = "prompts" if online else "pairs" if method.data == "pairs" else "lists" if method.data == "lists" else "examples"
    unit = getattr(batches, "batch_unit", unit)  # a source whose rows are not one per prompt says what it counts
    if config.progress or config.logging_steps:
        accelerator.print(f"effective batch: {config.per_device_train_batch_size} {unit} per device × {world_size} "
                          f"process(es) × {accum} accumulation step(s) = "
                          f"{config.per_device_train_batch_size * world_size * accum} {unit} per optimizer step")
    bar = tqdm(total=config.max_steps, initial=start_step, desc=f"{config.method} (seed {config.seed})",
               disable=not (config.progress and accelerator.is_main_process))
    for step in range(start_step, config.max_steps):
        sums: dict[str, float] = {}
        # Token-averaged losses (SFT) divide by the completion tokens of the whole global batch,
        # not of each micro-batch, so accumulation and DDP leave the trajectory unchanged.
        ctx.tokens_per_micro_batch = batches.tokens_per_micro_batch(step)
        for micro in range(accum):
            batch = batches.micro_batch(step, micro, accelerator.process_index)
            sync = micro == accum - 1
            with (contextlib.nullcontext() if sync else accelerator.no_sync(model)):
                with accelerator.autocast():
                    loss, metrics = method.step(ctx, batch)
                bad = accelerator.reduce(torch.tensor(0.0 if math.isfinite(loss.item()) else 1.0,
                                                      device=accelerator.device), "sum")
                if bad.item() > 0:
                    path = _save_checkpoint(accelerator, output_dir, step, history, config, scheduler)
                    bar.close()
                    raise NonFiniteLossError(
                        f"the loss became non-finite (NaN or inf) at step {step + 1}, micro-batch {micro}, on "
                        f"{int(bad.item())} of {world_size} process(es); the weights before this step are saved in "
                        f"{path}. Continue from there with a lower learning rate (now {config.learning_rate}): "
                        f"--resume_from_checkpoint {path} --learning_rate <lower>; or clip gradients "
                        "(--max_grad_norm), or check the data for empty or degenerate rows."
                    )
                accelerator.backward(loss / accum)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v / accum
        if config.max_grad_norm > 0:
            sums["grad_norm"] = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm).item()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        keys = sorted(sums)
        mean = accelerator.reduce(torch.tensor([sums[k] for k in keys], device=accelerator.device), "mean")
        record = {"step": step + 1, **dict(zip(keys, mean.tolist())), "learning_rate": scheduler.get_last_lr()[0]}
        history.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        if config.logging_steps and (step + 1) % config.logging_steps == 0:
            accelerator.print({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()})
        if config.save_steps and (step + 1) % config.save_steps == 0 and step + 1 < config.max_steps:
            _save_checkpoint(accelerator, output_dir, step + 1, history, config, scheduler)
    bar.close()

    unwrapped = accelerator.unwrap_model(model)  # a wrapped model saves its extra parts next to the policy
    if start_step < config.max_steps or not (output_dir / "final").exists():
        _save_checkpoint(accelerator, output_dir, config.max_steps, history, config, scheduler)
        if accelerator.is_main_process:
            unwrapped.save_pretrained(output_dir / "final")
            tokenizer.save_pretrained(output_dir / "final")
            (output_dir / "history.json").write_text(json.dumps(history, indent=1))
        accelerator.wait_for_everyone()
    if method.wrap_model is not None:
        unwrapped = unwrapped.policy
    unwrapped.eval()
    return TrainResult(unwrapped, tokenizer, history, output_dir, reference, accelerator.num_processes)


__all__ = ["train", "TrainConfig", "TrainResult", "NonFiniteLossError", "DataError"]
