"""The pocket model: deterministic build, tokenizer conventions, caching, and SFT quality.

Wall-clock times are not asserted here; `benchmarks/pocket_build.py` measures them.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import alignlib.pocket as pocket
from alignlib.data import encode_completion, encode_prompt
from alignlib.pocket import PocketConfig, build_pocket, build_tokenizer, load_pocket, pocket_dir
from alignlib.rollout import sample

SMALL = PocketConfig(pretrain_steps=10, sft_steps=10)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no safetensors in {folder}"
    out = {}
    for f in files:
        out.update(load_file(f))
    return out


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def small_builds(tmp_path_factory):
    """Three small builds: a and b with the same config, c with another seed."""
    root = tmp_path_factory.mktemp("pocket-builds")
    a = build_pocket("reviews", SMALL, out_dir=root / "a")
    b = build_pocket("reviews", SMALL, out_dir=root / "b")
    c = build_pocket("reviews", PocketConfig(pretrain_steps=10, sft_steps=10, seed=1), out_dir=root / "c")
    return a, b, c


@pytest.mark.parametrize("stage", ["base", "sft"])
def test_build_is_bit_identical(small_builds, stage):
    """Two builds with the same world and config give bit-identical weights (base and SFT stages)."""
    a, b, _ = small_builds
    wa, wb = _weights(a / stage), _weights(b / stage)
    assert len(wa) > 10
    assert _same_weights(wa, wb)


@pytest.mark.parametrize("stage", ["base", "sft"])
def test_other_seed_gives_other_weights(small_builds, stage):
    """A different seed gives different weights (so the identity above is not vacuous)."""
    a, _, c = small_builds
    assert not _same_weights(_weights(a / stage), _weights(c / stage))


def test_sft_stage_differs_from_base(small_builds):
    """The SFT stage really trains on top of the base."""
    a, _, _ = small_builds
    assert not _same_weights(_weights(a / "base"), _weights(a / "sft"))


def test_build_writes_complete_folder(small_builds):
    """A build leaves base/, sft/ (model + tokenizer) and pocket.json with the config, and no temp folder."""
    import json

    a, _, _ = small_builds
    info = json.loads((a / "pocket.json").read_text())
    assert info["world"] == "reviews" and info["config"]["pretrain_steps"] == 10
    assert math.isfinite(info["sft_loss"]) and info["parameters"] > 0
    for stage in ("base", "sft"):
        assert (a / stage / "config.json").exists() and (a / stage / "tokenizer.json").exists()
    assert not list(a.parent.glob(".building-*"))


# ------------------------------------------------------------------- tokenizer
def test_tokenizer_round_trips_reviews(reviews_world):
    """decode(encode(x)) == x for texts made of in-vocabulary words; unknown words map to <unk>."""
    tok = build_tokenizer(reviews_world)
    for ex in reviews_world.sft_examples(200, seed=5):
        for text in (ex.prompt, ex.completion, f"{ex.prompt} {ex.completion}"):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids
            assert tok.decode(ids) == text
    assert tok("review the zorblax :", add_special_tokens=False)["input_ids"][2] == tok.unk_token_id


def test_prompts_get_bos_completions_do_not(reviews_world):
    """Prompt ids start with BOS (and have no EOS); completion ids have no BOS and end with EOS."""
    tok = build_tokenizer(reviews_world)
    ex = reviews_world.sft_examples(1, seed=0)[0]
    p = encode_prompt(tok, ex.prompt, None)
    c, cut = encode_completion(tok, ex.completion, None)
    assert p[0] == tok.bos_token_id and p.count(tok.bos_token_id) == 1 and tok.eos_token_id not in p
    assert tok.bos_token_id not in c and c[-1] == tok.eos_token_id and c.count(tok.eos_token_id) == 1
    assert not cut
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}) == 4


# -------------------------------------------------------------------- caching
def test_load_pocket_builds_once_then_loads_from_cache(tmp_path, monkeypatch):
    """The first load_pocket builds into $ALIGNLIB_CACHE; later calls (both stages) load without building
    and leave the folder untouched."""
    monkeypatch.setenv("ALIGNLIB_CACHE", str(tmp_path / "cache"))
    tiny = PocketConfig(pretrain_steps=2, sft_steps=2)
    calls = []
    real_build = pocket.build_pocket

    def counting_build(*args, **kwargs):
        calls.append(args)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(pocket, "build_pocket", counting_build)
    model, tok = load_pocket("reviews", config=tiny)
    path = pocket_dir("reviews", tiny)
    assert len(calls) == 1 and path.parent == tmp_path / "cache" and (path / "pocket.json").exists()
    stamps = {p: p.stat().st_mtime_ns for p in [path, *path.rglob("*")]}

    def no_build(*args, **kwargs):
        raise AssertionError("load_pocket rebuilt a cached pocket model")

    monkeypatch.setattr(pocket, "build_pocket", no_build)
    again, _ = load_pocket("reviews", config=tiny)
    base, _ = load_pocket("reviews", stage="base", config=tiny)
    assert _same_weights(model.state_dict(), again.state_dict())
    assert not _same_weights(model.state_dict(), base.state_dict())
    assert {p: p.stat().st_mtime_ns for p in [path, *path.rglob("*")]} == stamps
    with pytest.raises(ValueError, match="stage"):
        load_pocket("reviews", stage="rl", config=tiny)


def test_cache_folder_changes_when_the_world_text_changes(monkeypatch):
    """Editing a world's corpus gives a new cache folder, so a stale pocket model is never reused;
    the same world text gives the same folder in every process (no Python hash randomisation)."""
    import subprocess
    import sys

    from alignlib.worlds import ReviewsWorld

    before = pocket_dir("reviews")
    out = subprocess.run([sys.executable, "-c", "from alignlib.pocket import pocket_dir; print(pocket_dir('reviews'))"],
                         capture_output=True, text=True, check=True, env={**__import__("os").environ,
                                                                           "PYTHONHASHSEED": "7"})
    assert out.stdout.strip() == str(before)
    real = ReviewsWorld.pretraining_corpus
    monkeypatch.setattr(ReviewsWorld, "pretraining_corpus",
                        lambda self, n, seed: [doc + " indeed" for doc in real(self, n, seed)])
    pocket.world_fingerprint.cache_clear()
    try:
        after = pocket_dir("reviews")
    finally:
        monkeypatch.undo()
        pocket.world_fingerprint.cache_clear()
    assert after != before and after.parent == before.parent
    assert pocket_dir("reviews") == before


# -------------------------------------------------------------------- quality
def test_default_pocket_samples_are_grammatical(pocket_reviews, reviews_world):
    """The default SFT pocket model's samples on the (unseen) eval prompts are ≥ 95% grammatical
    (pure sampling, temperature 1, fixed seed, ≥ 400 samples)."""
    model, tok = pocket_reviews
    prompts = reviews_world.prompts("eval")
    reps = math.ceil(400 / len(prompts))
    repeated = [p for p in prompts for _ in range(reps)]
    s = sample(model, tok, repeated, max_new_tokens=32, seed=0)
    ok = [reviews_world.is_grammatical(p, t) for p, t in zip(repeated, s.texts)]
    frac = sum(ok) / len(ok)
    print(f"\npocket grammatical fraction: {frac:.4f} ({sum(ok)}/{len(ok)} samples, "
          f"{len(prompts)} eval prompts × {reps})")
    assert len(ok) >= 400
    assert frac >= 0.95, [t for t, g in zip(s.texts, ok) if not g][:10]
