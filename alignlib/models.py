"""Load policy, reference and tokenizer: the pocket model, a Hugging Face id or a local path.

Flags as in TRL/peft: `lora` wraps the policy in LoRA adapters (the frozen
base then doubles as the reference: adapters off = π_ref, no second copy);
`load_in_4bit` loads the base in 4-bit NF4 with bitsandbytes (QLoRA; needs a
CUDA GPU and `lora`); `bf16` loads weights in bfloat16.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch

POCKET_NAMES = {"pocket": "sft", "pocket-sft": "sft", "pocket-base": "base"}


class ModelLoadError(ValueError):
    """Raised when a model cannot be loaded as asked; the message says why and what to do."""


def check_4bit_possible() -> None:
    """Raise ModelLoadError unless 4-bit loading can work here."""
    if not torch.cuda.is_available():
        raise ModelLoadError(
            "--load_in_4bit needs a CUDA GPU: bitsandbytes' 4-bit kernels do not run on this CPU-only machine. "
            "Drop the flag (use --lora alone to save memory on CPU) or run on a GPU."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(f"--load_in_4bit needs bitsandbytes: pip install bitsandbytes ({exc})") from None


def load_tokenizer_and_model(name: str, world: str | None, bf16: bool = False, load_in_4bit: bool = False,
                             kind: str = "causal_lm"):
    """Return (model, tokenizer) for a pocket name ("pocket", "pocket-base"), a hub id or a local folder.

    kind "reward" loads the same weights as a sequence classifier with one output
    (a new scalar head on the backbone): the reward model of the RLHF pipeline.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if kind == "reward":
        return _load_reward_model(name, world, bf16)
    if name in POCKET_NAMES:
        if load_in_4bit:
            check_4bit_possible()
        if world is None:
            raise ModelLoadError(f"model {name!r} is built per world; pass --world (e.g. --world reviews)")
        from .pocket import load_pocket

        model, tokenizer = load_pocket(world, stage=POCKET_NAMES[name])
        if bf16:
            model = model.to(torch.bfloat16)
        return model, tokenizer
    kwargs = {}
    if load_in_4bit:
        check_4bit_possible()
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float16,
        )
    if bf16:
        kwargs["dtype"] = torch.bfloat16
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except OSError as exc:
        raise ModelLoadError(
            f"could not load model {name!r}: {exc}\nUse 'pocket' / 'pocket-base', a local folder holding a "
            "saved model, or a Hugging Face id (needs network access or a filled HF cache)."
        ) from None
    if tokenizer.pad_token is None:  # many causal LMs ship without one; EOS is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.bos_token_id is None and tokenizer.eos_token_id is None:
        raise ModelLoadError(f"tokenizer of {name!r} has neither BOS nor EOS; completions need an EOS token")
    return model, tokenizer


def _load_reward_model(name: str, world: str | None, bf16: bool):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = name
    if name in POCKET_NAMES:
        if world is None:
            raise ModelLoadError(f"model {name!r} is built per world; pass --world (e.g. --world reviews)")
        from .pocket import load_pocket, pocket_dir

        load_pocket(world)  # builds the cache if needed
        path = pocket_dir(world) / POCKET_NAMES[name]
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, **({"dtype": torch.bfloat16} if bf16 else {}))
    except OSError as exc:
        raise ModelLoadError(f"could not load reward model {name!r}: {exc}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # the classifier reads the last non-pad token of each row: it must know the pad id
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def add_lora(model, r: int = 8, alpha: int = 16, dropout: float = 0.0, quantized: bool = False):
    """Return `model` wrapped with LoRA adapters on every linear layer (peft)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear",
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


@dataclass
class Reference:
    """The frozen reference policy π_ref: a separate model, or the policy with its adapters switched off."""

    model: torch.nn.Module | None = None  # None: use the policy's adapters-off base
    precomputed: bool = False  # its log-probs were computed before training and the model freed

    def context(self, policy):
        """Return a context manager under which the model to call is the reference."""
        if self.precomputed:
            raise RuntimeError("the reference's log-probs were precomputed (precompute_ref_log_probs) and the "
                               "reference model was freed; read batch['ref_logps'] instead")
        if self.model is not None:
            return contextlib.nullcontext(self.model)
        return _adapters_off(policy)

    def to(self, device):
        if self.model is not None:
            self.model.to(device)
        return self


@contextlib.contextmanager
def _adapters_off(policy):
    base = policy.module if hasattr(policy, "module") else policy  # unwrap DDP
    with base.disable_adapter():
        yield policy


def frozen_copy(model) -> torch.nn.Module:
    """Return a deep copy of `model` with gradients off and in eval mode."""
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
