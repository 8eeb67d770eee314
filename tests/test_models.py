"""Model loading flags: LoRA (reference = adapters off), local folders, clear errors."""

from __future__ import annotations

import pytest
import torch

from alignlib.config import TrainConfig
from alignlib.models import ModelLoadError, load_tokenizer_and_model
from alignlib.loop import train


def test_lora_trains_adapters_only_and_reference_is_the_base(tmp_path, pocket_reviews, reviews_world):
    """With --lora only adapter weights change, and π_ref (adapters off) equals the untouched SFT model."""
    base, tok = pocket_reviews
    rows = [{"prompt": ex.prompt, "chosen": ex.completion, "rejected": "it was bad ."}
            for ex in reviews_world.sft_examples(32, seed=0)]
    before = {k: v.clone() for k, v in base.state_dict().items()}
    cfg = TrainConfig(method="dpo", lora=True, max_steps=3, learning_rate=1e-2, per_device_train_batch_size=8,
                      output_dir=str(tmp_path / "run"), progress=False, logging_steps=0, save_steps=0)
    import copy

    result = train(cfg, model=copy.deepcopy(base), tokenizer=tok, dataset=rows)
    peft_model = result.model
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    batch = tok(["review the pizza : it was good ."], return_tensors="pt")
    with torch.no_grad(), result.reference.context(peft_model) as ref:
        ref_logits = ref(**batch).logits
    with torch.no_grad():
        base_logits = base(**batch).logits
        policy_logits = peft_model(**batch).logits
    assert torch.allclose(ref_logits, base_logits, atol=1e-5)
    assert not torch.allclose(policy_logits, base_logits, atol=1e-4)  # the adapters did learn something
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())


def test_local_folder_loads_like_a_hub_model(tmp_path, pocket_reviews):
    """A saved model folder is accepted by --model (the path used for real models)."""
    model, tok = pocket_reviews
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded, tok2 = load_tokenizer_and_model(str(tmp_path / "m"), world=None)
    ids = tok("review the pizza :", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(loaded(**ids).logits, model(**ids).logits, atol=1e-6)
    assert tok2.pad_token_id == tok.pad_token_id


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="could not load model"):
        load_tokenizer_and_model(str(tmp_path / "nowhere"), world=None)


def test_4bit_on_cpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelLoadError, match="CUDA"):
        load_tokenizer_and_model("pocket", world="reviews", load_in_4bit=True)
