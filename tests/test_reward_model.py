"""The reward-model mode of the one loop: a scalar head on the pocket backbone, trained with the BT loss."""

from __future__ import annotations

import pytest
import torch

from alignlib.config import TrainConfig
from alignlib.data import collate_examples, tokenize_rows
from alignlib.rollout import preference_pairs
from alignlib.loop import train


def test_reward_mode_learns_gold_preferences(tmp_path, pocket_reviews, reviews_world):
    """Trained on 4096 gold-oracle-labelled SFT pairs, the RM ranks held-out eval-prompt pairs like the gold judge."""
    cfg = TrainConfig(method="reward", output_dir=str(tmp_path / "rm"), max_steps=300, learning_rate=1e-3,
                      per_device_train_batch_size=32, num_examples=4096, save_steps=0, progress=False, logging_steps=0)
    result = train(cfg)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    policy, tok = pocket_reviews
    held_out = [p for p in preference_pairs(policy, tok, reviews_world, reviews_world.prompts("eval") * 20, seed=99)
                if p["chosen_gold"] != p["rejected_gold"]]
    batch = collate_examples(tokenize_rows(held_out, tok, "pairs"), tok.pad_token_id)
    with torch.no_grad():
        scores = result.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    chosen, rejected = scores.chunk(2)
    gold = torch.tensor([p["chosen_gold"] > p["rejected_gold"] for p in held_out])
    accuracy = ((chosen > rejected) == gold).float().mean().item()
    print(f"held-out RM accuracy vs gold verdict: {accuracy:.3f} on {len(held_out)} pairs")
    assert accuracy >= 0.65  # chance is 0.5; the standard error here is about 0.025

    # the head reads the last real token: a row's score does not depend on the padding around it
    alone = collate_examples(tokenize_rows(held_out[:1], tok, "pairs"), tok.pad_token_id)
    with torch.no_grad():
        single = result.model(input_ids=alone["input_ids"], attention_mask=alone["attention_mask"]).logits.squeeze(-1)
    assert single[0].item() == pytest.approx(chosen[0].item(), abs=1e-4)


def test_reward_mode_refuses_lora_for_now():
    with pytest.raises(ValueError, match="--lora is not supported with --method reward"):
        TrainConfig(method="reward", lora=True)
