"""Command line: `python -m alignlib {train,evaluate,build-pocket} [flags]`.

`train` takes every field of `TrainConfig` as a flag (the same dataclass the
notebooks build), `build-pocket` every field of `PocketConfig` (model size and
recipe, e.g. --hidden_size 256 --num_hidden_layers 6), e.g.

    python -m alignlib train --method dpo --world reviews --model pocket \
        --learning_rate 2e-4 --max_steps 150 --output_dir runs/dpo

and evaluates the result on the world's gold judgement unless --no_eval.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from .config import TrainConfig


@dataclass
class EvalConfig:
    model: str = field(default="pocket", metadata={"help": "policy to evaluate: a folder, hub id or 'pocket'"})
    reference: str = field(default="pocket", metadata={"help": "reference policy (win rate and KL are against it)"})
    world: str = field(default="reviews", metadata={"help": "world whose gold judgement scores the samples"})
    samples_per_prompt: int = field(default=4, metadata={"help": "samples per eval prompt"})
    max_new_tokens: int = field(default=32, metadata={"help": "tokens per sampled completion"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    chat: bool = field(default=False, metadata={
        "help": "ask each eval prompt as one user message rendered by the model's chat template (for a model "
                "trained on conversational prompts); the gold judge reads the world's question inside it"})


@dataclass
class PocketTarget:
    world: str = field(default="reviews", metadata={"help": "world whose pocket model to build (size: see flags)"})


@dataclass
class TrainOnlyFlags:
    no_eval: bool = field(default=False, metadata={"help": "skip the gold evaluation after training"})
    eval_samples_per_prompt: int = field(default=4, metadata={"help": "samples per eval prompt after training"})


def _parser(*dataclasses_):
    from transformers import HfArgumentParser

    return HfArgumentParser(dataclasses_)


def trained_on_chat(config: TrainConfig) -> bool:
    """True when training read its prompts from data in TRL's conversational format (lists of messages)."""
    if config.dataset is None:
        return False  # generated from the world: text prompts
    from .data import DataError, check_prompt_format, load_rows

    try:
        return check_prompt_format([row["prompt"] for row in load_rows(config.dataset, "prompts")])
    except DataError:
        return False


def _evaluate(policy, reference, tokenizer, world_name, samples_per_prompt, max_new_tokens, seed, chat=False):
    """Evaluate on the world's eval prompts; with `chat`, each as one user message rendered by the chat template."""
    from .evaluate import evaluate_policy
    from .worlds import get_world

    world, prompts = get_world(world_name), None
    if chat:
        from .data import render_prompts
        from .worlds.base import ChatPromptJudge

        prompts = render_prompts(tokenizer, [[{"role": "user", "content": p}] for p in world.prompts("eval")])
        world = ChatPromptJudge(world)
    result = evaluate_policy(policy, reference, tokenizer, world, prompts=prompts, samples_per_prompt=samples_per_prompt,
                             max_new_tokens=max_new_tokens, seed=seed)
    return result.as_dict()


def main(argv: list[str] | None = None) -> int:
    from .data import DataError
    from .models import ModelLoadError
    from .loop import NonFiniteLossError

    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ("train", "evaluate", "build-pocket")
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print(f"\ncommands: {', '.join(commands)}; add --help after a command for its flags")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in commands:
        print(f"error: unknown command {command!r}; valid commands: {', '.join(commands)}", file=sys.stderr)
        return 2
    try:
        if command == "train":
            from .loop import train

            config, flags = _parser(TrainConfig, TrainOnlyFlags).parse_args_into_dataclasses(rest)
            result = train(config)
            print(json.dumps({"final": result.history[-1]}, indent=1))
            from .methods import METHODS

            if METHODS[config.method].model_kind != "causal_lm":
                print(f"(no gold evaluation: --method {config.method} trains a {METHODS[config.method].model_kind} "
                      "model, not a policy that can be sampled)")
            elif not flags.no_eval:
                chat = trained_on_chat(config)  # evaluate on the kind of prompt it trained on
                if chat:
                    print("(gold evaluation on the world's eval prompts as user messages, rendered by the chat "
                          "template as in training)")
                metrics = _evaluate(result.model, result.reference.model or result.reference, result.tokenizer,
                                    config.world, flags.eval_samples_per_prompt, config.max_new_tokens, config.seed,
                                    chat=chat)
                (result.output_dir / "eval.json").write_text(json.dumps(metrics, indent=1))
                print(json.dumps({"eval": metrics}, indent=1))
        elif command == "evaluate":
            from .models import load_tokenizer_and_model

            (cfg,) = _parser(EvalConfig).parse_args_into_dataclasses(rest)
            policy, tokenizer = load_tokenizer_and_model(cfg.model, cfg.world)
            reference, _ = load_tokenizer_and_model(cfg.reference, cfg.world)
            print(json.dumps(_evaluate(policy, reference, tokenizer, cfg.world, cfg.samples_per_prompt,
                                       cfg.max_new_tokens, cfg.seed, chat=cfg.chat), indent=1))
        else:
            from .pocket import PocketConfig, load_pocket, pocket_dir
            from .worlds import get_world

            cfg, pocket = _parser(PocketTarget, PocketConfig).parse_args_into_dataclasses(rest)
            get_world(cfg.world)  # validates the name
            load_pocket(cfg.world, config=pocket)
            path = pocket_dir(cfg.world, pocket)
            print(f"{path}\n  train from it with: --model {path / 'sft'}")
    except (ValueError, DataError, ModelLoadError, NonFiniteLossError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
