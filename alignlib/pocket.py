"""The pocket model: a tiny Llama-architecture causal LM built locally per world.

`load_pocket("reviews")` returns an SFT model and its tokenizer. The first call
builds them (word-level tokenizer from the world's vocabulary → pretraining on
the world's corpus → supervised fine-tuning on its demonstrations) and saves
them with `save_pretrained` under

    $ALIGNLIB_CACHE/pocket-<world>-<config hash>-<world text hash>/{base,sft}

(default cache: the user cache dir, e.g. ~/.cache/alignlib). Later calls load
from disk. Because it is a real `transformers` model, everything downstream —
`generate`, LoRA, `accelerate`, TRL — treats it like any Hugging Face model.

The build uses its own few-line loop rather than `alignlib.loop`: a cached
artefact must come out identical whatever launcher (one process, DDP, a
notebook) first asked for it, so it is always built in one process.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import TokenizedExample, collate_examples, encode_completion, encode_prompt
from .logprobs import sequence_logprobs
from .losses.sft import sft_loss
from .worlds import World, get_world

# Bump when the build recipe changes, so stale caches are not reused.
BUILD_VERSION = 1
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}


@dataclass(frozen=True)
class PocketConfig:
    """Size and recipe of a pocket model. The defaults give ≈0.9M parameters."""

    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 64
    pretrain_steps: int = 150
    sft_steps: int = 250
    batch_size: int = 64
    learning_rate: float = 6e-3
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({"version": BUILD_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def cache_root() -> Path:
    """Return the cache directory: $ALIGNLIB_CACHE, else the user cache dir."""
    env = os.environ.get("ALIGNLIB_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("alignlib"))


@functools.lru_cache(maxsize=None)
def world_fingerprint(world_name: str) -> str:
    """Return a short hash of the text a pocket model of `world_name` is built from.

    It samples the world's pretraining documents, SFT demonstrations and prompts, so
    editing a world's templates or vocabulary changes the cache folder and the stale
    model is not reused (the build recipe itself is covered by BUILD_VERSION).
    """
    world = get_world(world_name)
    texts = world.pretraining_corpus(32, seed=0)
    texts += [f"{ex.prompt}\x1f{ex.completion}" for ex in world.sft_examples(32, seed=1)]
    texts += list(world.prompts("train"))[:32] + list(world.prompts("eval"))[:32]
    return hashlib.sha256("\x1e".join(texts).encode()).hexdigest()[:8]


def pocket_dir(world: str, config: PocketConfig = PocketConfig()) -> Path:
    """Return the cache folder of the pocket model for `world` and `config`."""
    return cache_root() / f"pocket-{world}-{config.key()}-{world_fingerprint(world)}"


# ---------------------------------------------------------------- building
def build_tokenizer(world: World):
    """Return a word-level `PreTrainedTokenizerFast` over the world's vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = set()
    for doc in world.pretraining_corpus(2000, seed=12345):
        words.update(doc.split())
    for split in ("train", "eval"):
        for prompt in world.prompts(split):
            words.update(prompt.split())
    specials = list(SPECIAL_TOKENS.values())
    vocab = {tok: i for i, tok in enumerate(specials + sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bos_id = vocab["<bos>"]
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos_id)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    fast.padding_side = "right"
    return fast


def _new_model(vocab_size: int, tokenizer, config: PocketConfig):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _fit(model, examples: list[TokenizedExample], steps: int, config: PocketConfig, pad_id: int, seed: int) -> float:
    """Minimise the SFT loss for `steps` AdamW steps (warm-up then cosine); return the last loss."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    warmup = max(1, steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        idx = torch.randint(len(examples), (config.batch_size,), generator=gen).tolist()
        batch = collate_examples([examples[i] for i in idx], pad_id)
        _, token_lp, mask = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        loss, _ = sft_loss(token_lp, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    return loss.item()


def build_pocket(world_name: str, config: PocketConfig = PocketConfig(), out_dir: Path | None = None) -> Path:
    """Build the base and SFT pocket models for `world_name` into `out_dir`; return it.

    Deterministic: the same world, config and seed give bit-identical weights.
    """
    world = get_world(world_name)
    out_dir = Path(out_dir or pocket_dir(world_name, config))
    t0 = time.perf_counter()
    tokenizer = build_tokenizer(world)
    model = _new_model(len(tokenizer), tokenizer, config)
    n_docs = config.pretrain_steps * config.batch_size // 4 + 1

    # Stage 1, pretraining: next-token loss on every token of a plain document.
    docs = world.pretraining_corpus(n_docs, seed=config.seed)
    bos = [tokenizer.bos_token_id]
    pre = [TokenizedExample(bos, [encode_completion(tokenizer, d, None)[0]]) for d in docs]
    base_loss = _fit(model, pre, config.pretrain_steps, config, tokenizer.pad_token_id, seed=config.seed)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=out_dir.parent))  # same disk, so the rename is atomic
    model.save_pretrained(tmp / "base")
    tokenizer.save_pretrained(tmp / "base")

    # Stage 2, SFT: loss on the completion only, given the prompt.
    demos = world.sft_examples(n_docs, seed=config.seed + 1)
    sft = [
        TokenizedExample(encode_prompt(tokenizer, ex.prompt, None), [encode_completion(tokenizer, ex.completion, None)[0]])
        for ex in demos
    ]
    sft_final = _fit(model, sft, config.sft_steps, config, tokenizer.pad_token_id, seed=config.seed + 1)
    model.save_pretrained(tmp / "sft")
    tokenizer.save_pretrained(tmp / "sft")
    info = {"world": world_name, "config": dataclasses.asdict(config), "build_version": BUILD_VERSION,
            "parameters": sum(p.numel() for p in model.parameters()), "pretrain_loss": base_loss,
            "sft_loss": sft_final, "build_seconds": time.perf_counter() - t0}
    (tmp / "pocket.json").write_text(json.dumps(info, indent=2))

    # Publish atomically: an interrupted build never leaves a half-written cache,
    # and two processes building at once both end with the same complete folder.
    try:
        os.rename(tmp, out_dir)
    except OSError:
        if not (out_dir / "pocket.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def load_pocket(world_name: str, stage: str = "sft", config: PocketConfig = PocketConfig()):
    """Return (model, tokenizer) of the pocket model for `world_name`; build it if it is not cached.

    stage: "sft" (the supervised model every chapter starts from) or "base" (pretrained only).
    """
    from transformers import AutoTokenizer, LlamaForCausalLM

    if stage not in ("sft", "base"):
        raise ValueError(f"unknown pocket stage {stage!r}; use 'sft' or 'base'")
    cache_root().mkdir(parents=True, exist_ok=True)
    path = pocket_dir(world_name, config)
    if not (path / "pocket.json").exists():
        build_pocket(world_name, config, path)
    tokenizer = AutoTokenizer.from_pretrained(path / stage)
    model = LlamaForCausalLM.from_pretrained(path / stage)
    model.eval()
    return model, tokenizer
