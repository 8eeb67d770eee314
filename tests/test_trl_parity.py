"""DPO loss parity with TRL 1.16: the same batch tensors in, the same loss out.

TRL 1.16 has no standalone DPO loss function, so we build a real `trl.DPOTrainer`
with the pocket model as policy and a perturbed copy as reference (non-zero
log-ratios), take one batch from its dataloader and compare
`trainer.compute_loss` with `alignlib.logprobs.sequence_logprobs` + `alignlib.losses.dpo_loss`
on exactly those tensors.

Batch layout (read from trl/trainer/dpo_trainer.py, `DataCollatorForPreference`):
rows are [prompt + chosen] for every pair, then [prompt + rejected] for every
pair, right-padded, with `completion_mask` = 1 on completion tokens only. That is
alignlib's layout (`collate_examples`), so the first half of our [2B] log-probs is
the chosen half and no adaptation is needed. TRL's loss sums the per-token
log-probs of label ≠ −100 positions (labels = input_ids masked by completion_mask)
— our Σ_t m_t log π.

Tokenisation: TRL tokenises `prompt` and `prompt + chosen` (string concatenation,
EOS appended as text) and takes the completion ids where the two diverge. With a
leading space on the completion, the word-level pocket tokenizer gives the very ids
alignlib's `tokenize_rows` gives (BOS + prompt words, completion words + EOS); the
first test checks that, so parity here also covers our tokenisation.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from alignlib.data import tokenize_rows
from alignlib.logprobs import sequence_logprobs
from alignlib.losses import dpo_loss

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

# transformers 5 / TRL 1.16 deprecation noise (gradient_checkpointing → activation_checkpointing)
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

TOL = 1e-5
MAX_DIFF: dict[str, float] = {}  # filled by the tests, printed at the end (run with -s to see it)


@pytest.fixture(scope="module")
def rows(reviews_world):
    """8 preference rows from the reviews world; `rejected` is another example's completion."""
    ex = reviews_world.sft_examples(8, seed=0)
    return [{"prompt": e.prompt, "chosen": " " + e.completion, "rejected": " " + ex[(i + 3) % 8].completion}
            for i, e in enumerate(ex)]


@pytest.fixture(scope="module")
def policy_and_ref(pocket_reviews):
    """The SFT pocket model (policy) and a copy with Gaussian noise on every weight (reference)."""
    model, tokenizer = pocket_reviews
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return model, ref, tokenizer


def _trainer(policy_and_ref, rows, tmp_path, batch_size=4, **dpo_kwargs):
    """A DPOTrainer on fresh copies of policy and reference (TRL patches the models' forward)."""
    model, ref, tokenizer = policy_and_ref
    policy, ref = copy.deepcopy(model), copy.deepcopy(ref)
    args = trl.DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, per_device_train_batch_size=batch_size,
                         report_to="none", seed=0, **dpo_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trl.DPOTrainer(model=policy, ref_model=ref, args=args,
                                 train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
    return trainer, policy, ref


def _ours(policy, ref, batch, beta, label_smoothing=0.0):
    """alignlib's DPO loss on a TRL batch: logps of all 2B rows, split chosen | rejected."""
    lp, _, _ = sequence_logprobs(policy, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    with torch.no_grad():
        ref_lp, _, _ = sequence_logprobs(ref, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    b = lp.shape[0] // 2
    loss, metrics = dpo_loss(lp[:b], lp[b:], ref_lp[:b], ref_lp[b:], beta=beta, label_smoothing=label_smoothing)
    return loss, metrics, (lp[:b] - ref_lp[:b]) - (lp[b:] - ref_lp[b:])


def test_trl_tokenisation_matches_ours(policy_and_ref, rows, tmp_path):
    """TRL's tokenised dataset (prompt_ids / chosen_ids / rejected_ids) equals alignlib's `tokenize_rows`."""
    trainer, _, _ = _trainer(policy_and_ref, rows, tmp_path)
    tokenizer = policy_and_ref[2]
    ours = tokenize_rows([{k: r[k].strip() for k in r} for r in rows], tokenizer, "pairs")
    for theirs, mine in zip(trainer.train_dataset, ours):
        assert theirs["prompt_ids"] == mine.prompt_ids
        assert theirs["chosen_ids"] == mine.completions[0]
        assert theirs["rejected_ids"] == mine.completions[1]
        assert mine.prompt_ids[0] == tokenizer.bos_token_id and mine.completions[0][-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_parity_with_trl(policy_and_ref, rows, tmp_path, beta):
    """|TRL DPOTrainer.compute_loss − alignlib dpo_loss| ≤ 1e-5 on the same batch (sigmoid loss, ε = 0),
    and the reward metrics agree too."""
    trainer, policy, ref = _trainer(policy_and_ref, rows, tmp_path, beta=beta)
    batch = next(iter(trainer.get_train_dataloader()))
    b = batch["input_ids"].shape[0] // 2
    assert b == 4 and set(batch) >= {"input_ids", "attention_mask", "completion_mask"}
    assert (batch["completion_mask"] <= batch["attention_mask"]).all()  # completion ⊂ real tokens

    theirs = trainer.compute_loss(trainer.model, batch)
    ours, metrics, h = _ours(policy, ref, batch, beta)
    # the reference really differs, so the test is not the trivial L = log 2 at h = 0
    assert h.abs().min() > 1e-2
    assert abs(ours.item() - 0.6931471805599453) > 1e-3

    diff = abs(ours.item() - theirs.item())
    MAX_DIFF[f"beta={beta}"] = diff
    print(f"\nTRL parity beta={beta}: ours={ours.item():.8f} trl={theirs.item():.8f} |diff|={diff:.2e}")
    assert diff <= TOL

    mode = "train" if trainer.model.training else "eval"  # where TRL's _compute_loss logs its metrics
    trl_metrics = {k: v[-1] for k, v in trainer._metrics[mode].items()}
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert metrics[key] == pytest.approx(trl_metrics[key], abs=1e-5), key


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_label_smoothing_parity_with_trl(policy_and_ref, rows, tmp_path, beta):
    """Conservative DPO (ε > 0) against TRL 1.16.

    In TRL 1.16 the "sigmoid" loss ignores `label_smoothing` (it is read only by "robust", "exo_pair", "aot"
    and "aot_unpaired"). "aot_unpaired" computes −(1−ε) log σ(βδ) − ε log σ(−βδ) with
    δ = sort(chosen log-ratios) − sort(rejected log-ratios) over the batch; for a batch of ONE pair the sort
    is the identity and δ = h, which is exactly our conservative-DPO loss. So we compare pair by pair,
    slicing each pair (chosen row i, rejected row B + i) out of TRL's batch of 4.
    """
    eps = 0.2
    trainer, policy, ref = _trainer(policy_and_ref, rows, tmp_path, beta=beta, loss_type="aot_unpaired",
                                    label_smoothing=eps)
    batch = next(iter(trainer.get_train_dataloader()))
    b = batch["input_ids"].shape[0] // 2
    diffs = []
    for i in range(b):
        pair = {k: v[[i, b + i]] for k, v in batch.items()}
        theirs = trainer.compute_loss(trainer.model, pair)
        ours, _, h = _ours(policy, ref, pair, beta, label_smoothing=eps)
        plain, _, _ = _ours(policy, ref, pair, beta, label_smoothing=0.0)
        assert abs(plain.item() - ours.item()) > 1e-4  # ε really matters for this pair
        diffs.append(abs(ours.item() - theirs.item()))
    MAX_DIFF[f"beta={beta}, eps={eps}"] = max(diffs)
    print(f"\nTRL parity beta={beta} eps={eps}: max |diff| over {b} pairs = {max(diffs):.2e}")
    assert max(diffs) <= TOL


def test_print_parity_summary():
    """Not a check: prints the largest |ours − TRL| seen by the tests above (visible with `pytest -s`)."""
    if MAX_DIFF:
        print("\nTRL parity max |diff|:", {k: f"{v:.2e}" for k, v in MAX_DIFF.items()},
              f"overall {max(MAX_DIFF.values()):.2e}")
