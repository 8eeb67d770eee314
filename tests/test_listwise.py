"""Listwise losses (`alignlib.losses.listwise`, METHODS.md ch. 5, Appendix A8–A9) and list data (`alignlib.lists`).

Losses are checked on raw float64 tensors: brute-force Plackett–Luce, permutation
invariance, the K = 2 reductions to DPO, gradient signs and the lambda weights. Data is
checked for every validation message, the skip counts, the collate layout and the pair counts.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings

import pytest
import torch

from alignlib.data import DataError
from alignlib.lists import (
    collate_lists,
    list_logps,
    lists_to_pairs,
    load_list_rows,
    tokenize_list_rows,
)
from alignlib.losses.listwise import (
    LAMBDA_WEIGHT_K2,
    LISTWISE_LOSSES,
    lambda_weights,
    lipo_lambda_loss,
    list_pair_weights,
    listmle_loss,
    listnet_loss,
    pairwise_from_list_loss,
    pro_loss,
)
from alignlib.losses.pairwise import dpo_loss

TOL = 1e-10


def _lists(b: int = 3, k: int = 4, seed: int = 0, distinct: bool = True):
    """Random float64 policy/reference log-probs [B, K] and labels [B, K] (distinct within a list if asked)."""
    gen = torch.Generator().manual_seed(seed)
    policy = -5 - 3 * torch.rand(b, k, generator=gen, dtype=torch.float64)
    ref = -5 - 3 * torch.rand(b, k, generator=gen, dtype=torch.float64)
    if distinct:
        scores = torch.stack([torch.randperm(k, generator=gen) for _ in range(b)]).double() * 0.5
    else:
        scores = torch.randint(0, 2, (b, k), generator=gen).double()
    return policy, ref, scores


def _plackett_luce_nll(s: list[float], order: list[int]) -> float:
    """−log P(order | s) under Plackett–Luce, written out term by term."""
    nll, remaining = 0.0, list(order)
    for item in order:
        nll -= s[item] - math.log(sum(math.exp(s[j]) for j in remaining))
        remaining.remove(item)
    return nll


# ================================================================== ListMLE
def test_listmle_equals_brute_force_plackett_luce():
    """ListMLE is the PL NLL of the label order, and exp(−NLL) over all K! orders sums to 1."""
    policy, ref, scores = _lists(b=1, k=4, seed=1)
    beta = 0.7
    s = (beta * (policy - ref))[0].tolist()
    label_order = sorted(range(4), key=lambda i: -scores[0, i].item())
    loss, _ = listmle_loss(policy, ref, scores, beta=beta)
    assert loss.item() == pytest.approx(_plackett_luce_nll(s, label_order), abs=TOL)
    total = sum(math.exp(-_plackett_luce_nll(s, list(p))) for p in itertools.permutations(range(4)))
    assert total == pytest.approx(1.0, abs=1e-12)


def test_listmle_batch_is_mean_of_lists():
    policy, ref, scores = _lists(b=3, k=3, seed=2)
    per_list = [listmle_loss(policy[i:i + 1], ref[i:i + 1], scores[i:i + 1])[0] for i in range(3)]
    assert listmle_loss(policy, ref, scores)[0].item() == pytest.approx(torch.stack(per_list).mean().item(), abs=TOL)


def test_listmle_tied_completions_are_not_compared():
    """Ties: ψ = (2, 1, 1) is "0 beats 1 and 2" only; all-equal labels give zero loss and zero gradient."""
    policy, ref, _ = _lists(b=1, k=3, seed=3)
    s = (0.1 * (policy - ref))[0]
    loss, _ = listmle_loss(policy, ref, torch.tensor([[2.0, 1.0, 1.0]], dtype=torch.float64))
    assert loss.item() == pytest.approx((torch.logsumexp(s, 0) - s[0]).item(), abs=TOL)
    policy.requires_grad_(True)
    tied, _ = listmle_loss(policy, ref, torch.ones(1, 3, dtype=torch.float64))
    tied.backward()
    assert tied.item() == 0.0 and torch.all(policy.grad == 0)


# ================================================================== every loss
LOSS_NAMES = sorted(LISTWISE_LOSSES)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_permutation_invariance(name):
    """Shuffling the K axis of log-probs and labels together leaves every listwise loss unchanged."""
    fn = LISTWISE_LOSSES[name]
    for distinct in (True, False):
        policy, ref, scores = _lists(b=4, k=5, seed=4, distinct=distinct)
        base, base_metrics = fn(policy, ref, scores)
        gen = torch.Generator().manual_seed(5)
        for _ in range(3):
            perm = torch.randperm(5, generator=gen)
            loss, metrics = fn(policy[:, perm], ref[:, perm], scores[:, perm])
            assert loss.item() == pytest.approx(base.item(), abs=TOL), (name, distinct, perm)
            assert metrics == pytest.approx(base_metrics, abs=TOL)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_raising_the_best_completion_lowers_the_loss(name):
    """∂L/∂ℓ_θ(best) < 0 and ∂L/∂ℓ_θ(worst) > 0 on every list."""
    policy, ref, scores = _lists(b=3, k=4, seed=6)
    policy.requires_grad_(True)
    LISTWISE_LOSSES[name](policy, ref, scores)[0].backward()
    rows = torch.arange(3)
    assert torch.all(policy.grad[rows, scores.argmax(-1)] < 0), name
    assert torch.all(policy.grad[rows, scores.argmin(-1)] > 0), name


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_shape_and_label_checks(name):
    policy, ref, scores = _lists(b=2, k=3)
    with pytest.raises(ValueError, match="one shape"):
        LISTWISE_LOSSES[name](policy, ref[:, :2], scores)
    with pytest.raises(ValueError, match="K ≥ 2"):
        LISTWISE_LOSSES[name](policy[:, :1], ref[:, :1], scores[:, :1])
    with pytest.raises(ValueError, match="NaN"):
        LISTWISE_LOSSES[name](policy, ref, scores.masked_fill(scores == scores.max(), float("nan")))


# ================================================================== K = 2 reductions (Appendix A8, A9)
def _pair(seed: int = 7, b: int = 5):
    """K = 2 lists whose first completion is the better one, and the DPO inputs of the same pairs."""
    policy, ref, _ = _lists(b=b, k=2, seed=seed)
    scores = torch.tensor([[1.5, 0.25]] * b, dtype=torch.float64)
    return policy, ref, scores, (policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1])


@pytest.mark.parametrize("mode", ["best_worst", "all_pairs"])
def test_pairwise_from_list_at_k2_is_dpo(mode):
    policy, ref, scores, pair = _pair()
    dpo, dpo_metrics = dpo_loss(*pair, beta=0.3, label_smoothing=0.1)
    loss, metrics = pairwise_from_list_loss(policy, ref, scores, beta=0.3, mode=mode, label_smoothing=0.1)
    assert loss.item() == pytest.approx(dpo.item(), abs=TOL)
    assert metrics == pytest.approx(dpo_metrics, abs=TOL)  # list metrics of (best, worst) are DPO's


def test_listmle_at_k2_is_dpo():
    policy, ref, scores, pair = _pair()
    assert listmle_loss(policy, ref, scores, beta=0.3)[0].item() == pytest.approx(
        dpo_loss(*pair, beta=0.3)[0].item(), abs=TOL)


def test_lipo_lambda_at_k2_is_weighted_dpo():
    """A8: LiPO-λ(K=2) = |G_1 − G_2| (1 − 1/log₂3) · DPO, whichever completion the model ranks first."""
    weight = abs(2 ** 1.5 - 2 ** 0.25) * LAMBDA_WEIGHT_K2
    assert LAMBDA_WEIGHT_K2 == pytest.approx(0.3690702464, abs=1e-9)
    for seed in range(4):  # the seeds include lists the model ranks right and lists it ranks wrong
        policy, ref, scores, pair = _pair(seed=seed, b=1)
        lipo = lipo_lambda_loss(policy, ref, scores, beta=0.3)[0]
        assert lipo.item() == pytest.approx(weight * dpo_loss(*pair, beta=0.3)[0].item(), abs=TOL)


def test_listnet_at_k2_is_conservative_dpo():
    """Softmax targets p = softmax(ψ/T) at K = 2 make the loss DPO with label_smoothing ε = σ(−Δψ/T)."""
    policy, ref, scores, pair = _pair()
    for temperature in (0.5, 2.0):
        eps = torch.sigmoid(torch.tensor(-1.25 / temperature, dtype=torch.float64)).item()
        expected = dpo_loss(*pair, beta=0.3, label_smoothing=eps)[0]
        loss = listnet_loss(policy, ref, scores, beta=0.3, label_temperature=temperature)[0]
        assert loss.item() == pytest.approx(expected.item(), abs=TOL)
    normalized = listnet_loss(policy, ref, scores, beta=0.3, target="normalized")[0]
    assert normalized.item() == pytest.approx(dpo_loss(*pair, beta=0.3, label_smoothing=0.25 / 1.75)[0].item(),
                                              abs=TOL)
    hard = listnet_loss(policy, ref, scores, beta=0.3, label_temperature=1e-3)[0]  # T → 0 gives DPO
    assert hard.item() == pytest.approx(dpo_loss(*pair, beta=0.3)[0].item(), abs=1e-9)


def test_pro_at_k2_is_reference_free_length_normalised_dpo():
    """A9: PRO(K=2, w=0) = −log σ((r_1 − r_2)(ℓ̄_1 − ℓ̄_2)) = DPO with β = r_1 − r_2, π_ref ≡ 1, on ℓ̄."""
    policy, ref, scores, _ = _pair()
    lengths = torch.tensor([[3.0, 7.0]] * 5, dtype=torch.float64)
    bar = policy / lengths
    zero = torch.zeros(5, dtype=torch.float64)
    expected = dpo_loss(bar[:, 0], bar[:, 1], zero, zero, beta=1.25)[0]
    loss, metrics = pro_loss(policy, ref, scores, sft_weight=0.0, lengths=lengths)
    assert loss.item() == pytest.approx(expected.item(), abs=TOL)
    with_sft, _ = pro_loss(policy, ref, scores, sft_weight=2.0, lengths=lengths)  # (K − 1)² = 1
    assert with_sft.item() == pytest.approx(expected.item() + 2.0 * metrics["nll_loss"], abs=TOL)
    assert metrics["nll_loss"] == pytest.approx(-policy[:, 0].mean().item(), abs=TOL)


def test_pro_matches_the_authors_loop_on_sorted_lists():
    """With distinct labels PRO equals the authors' loop over k with T_k^i = r_k − r_i and the (K−1)² SFT weight."""
    policy, ref, scores = _lists(b=3, k=4, seed=8)
    lengths = torch.randint(2, 9, (3, 4)).double()
    order = scores.argsort(-1, descending=True)
    r, s, lp = scores.gather(1, order), (policy / lengths).gather(1, order), policy.gather(1, order)
    expected = torch.zeros(())
    for k in range(3):
        neg_t = r[:, k:k + 1] - r[:, k + 1:]
        pos_t = neg_t.max(1).values
        expected = expected + (torch.log(torch.exp(s[:, k] * pos_t) + torch.exp(s[:, k + 1:] * neg_t).sum(1))
                               - s[:, k] * pos_t).mean()
    expected = expected + 2.0 * 9 * (-lp[:, 0]).mean()
    assert pro_loss(policy, ref, scores, lengths=lengths)[0].item() == pytest.approx(expected.item(), abs=1e-9)


# ================================================================== lambda weights
def test_lambda_weights_correct_versus_reversed_order():
    """Δ_ij = |G_i − G_j||1/D(τ_i) − 1/D(τ_j)| with τ from the model's scores; a reversed ranking moves the weights."""
    labels = torch.tensor([[3.0, 2.0, 1.0, 0.0]], dtype=torch.float64)
    gain = [7.0, 3.0, 1.0, 0.0]
    inv_d = [1 / math.log2(1 + t) for t in (1, 2, 3, 4)]
    right = lambda_weights(labels, torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
    wrong = lambda_weights(labels, torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    for i, j in itertools.combinations(range(4), 2):
        assert right[0, i, j].item() == pytest.approx((gain[i] - gain[j]) * abs(inv_d[i] - inv_d[j]), abs=TOL)
        assert wrong[0, i, j].item() == pytest.approx((gain[i] - gain[j]) * abs(inv_d[3 - i] - inv_d[3 - j]), abs=TOL)
        assert right[0, j, i] == 0 and wrong[0, j, i] == 0  # only ordered pairs ψ_i > ψ_j carry weight
    # positions 1 and 2 differ most in discount: the pair (best, second) weighs most when ranked right, the pair
    # (third, worst) when reversed (the model puts those two on top)
    assert right[0, 0, 1] > wrong[0, 0, 1] and wrong[0, 2, 3] > right[0, 2, 3]


def test_lambda_weights_at_the_first_step_use_the_ideal_order():
    """With π_θ = π_ref all s tie; τ then follows the labels, so LiPO-λ still learns and ignores the stored order."""
    policy, _, scores = _lists(b=2, k=4, seed=11)
    ideal = lambda_weights(scores, scores)
    assert torch.allclose(lambda_weights(scores, torch.zeros_like(scores)), ideal, atol=TOL)
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.allclose(lambda_weights(scores[:, perm], torch.zeros(2, 4))[:, perm.argsort()][:, :, perm.argsort()],
                          ideal, atol=TOL)
    policy.requires_grad_(True)
    lipo_lambda_loss(policy, policy.detach(), scores)[0].backward()
    assert torch.all(policy.grad[torch.arange(2), scores.argmax(-1)] < 0)


def test_lambda_weights_carry_no_gradient():
    policy, ref, scores = _lists(b=2, k=4, seed=9)
    policy.requires_grad_(True)
    lipo_lambda_loss(policy, ref, scores)[0].backward()
    s = (0.1 * (policy - ref)).detach()
    delta = lambda_weights(scores, s)
    expected = torch.zeros_like(policy)
    grad_pair = -0.1 * delta * torch.sigmoid(-(s[:, :, None] - s[:, None, :]))  # ∂/∂ρ_i of −Δ log σ(s_i − s_j)
    expected += (grad_pair.sum(2) - grad_pair.sum(1)) / 2  # the loss is the mean over B = 2 lists
    assert torch.allclose(policy.grad, expected, atol=TOL)


def test_pair_weights_sum_to_one_per_list():
    scores = torch.tensor([[3.0, 1.0, 3.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    bw = list_pair_weights(scores, "best_worst")
    assert bw[0, 0, 3] == 0.5 and bw[0, 2, 3] == 0.5 and bw[0].sum() == 1 and bw[1].sum() == 0
    ap = list_pair_weights(scores, "all_pairs")
    assert ap[0].sum().item() == pytest.approx(1.0) and (ap[0] > 0).sum() == 5  # 6 pairs minus the tie (0, 2)
    with pytest.raises(ValueError, match="unknown mode"):
        list_pair_weights(scores, "best")


# ================================================================== list data
TEXTS = ["the pizza was great .", "the pizza was good .", "the pizza was bad .", "the pizza was awful ."]
GOOD = {"prompt": "review the pizza :", "completions": TEXTS, "scores": [3.0, 2.0, 1.0, 0.0]}


def _with(**changes):
    return {**GOOD, **changes}


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "completions": TEXTS}, "missing column(s) ['scores (or ranks)']"),
    ({"completions": TEXTS, "scores": [1, 2, 3, 4]}, "missing column(s) ['prompt']"),
    (_with(ranks=[1, 2, 3, 4]), "both 'scores' and 'ranks'"),
    (_with(scores=[1.0, 2.0, 3.0]), "4 completions but 3 scores"),
    (_with(completions=TEXTS[:1], scores=[1.0]), "K ≥ 2"),
    (_with(completions="the pizza"), "expected a list of strings"),
    (_with(scores=[1, "2", 3, 4]), "expected a list of numbers"),
    (_with(scores=[True, False, 1, 0]), "expected a list of numbers"),
    ({"prompt": "p", "completions": TEXTS, "ranks": [1, 2, 5, 3]}, "from 1 (best) to K=4"),
    ({"prompt": "p", "completions": TEXTS, "ranks": [1, 2.5, 3, 4]}, "whole numbers"),
    (["p", TEXTS], "expected an object"),
])
def test_malformed_rows_raise_with_row_and_fix(row, message):
    with pytest.raises(DataError) as err:
        load_list_rows([GOOD, row])
    assert message in str(err.value) and "row 1" in str(err.value)


def test_lists_of_different_k_name_the_rows():
    rows = [GOOD, GOOD, _with(completions=TEXTS[:3], scores=[1.0, 2.0, 3.0]), GOOD]
    with pytest.raises(DataError, match=r"most have K=4, but rows \{3: \[2\]\}"):
        load_list_rows(rows)


@pytest.mark.parametrize("bad, reason, message", [
    (_with(completions=[TEXTS[0], "  "] + TEXTS[2:]), "empty_completion", "completion 1 is empty"),
    (_with(scores=[1.0, float("nan"), 0.0, 2.0]), "non_finite_score", "NaN or infinite"),
    (_with(scores=[1.0, float("inf"), 0.0, 2.0]), "non_finite_score", "NaN or infinite"),
    (_with(completions=[TEXTS[0], TEXTS[1], TEXTS[0], TEXTS[3]]), "duplicate_completion", "appears twice"),
    (_with(scores=[2.0] * 4), "all_tied", "no ranking signal"),
])
def test_droppable_rows_raise_or_skip_with_a_count(bad, reason, message):
    with pytest.raises(DataError, match=message) as err:
        load_list_rows([GOOD, bad, GOOD])
    assert "row 1" in str(err.value) and "on_bad='skip'" in str(err.value)
    kept, dropped = load_list_rows([GOOD, bad, GOOD], on_bad="skip")
    assert len(kept) == 2 and dropped[reason] == 1 and sum(dropped.values()) == 1
    with pytest.raises(DataError, match="every row was dropped"):
        load_list_rows([bad], on_bad="skip")


def test_partial_ties_are_kept_and_ranks_become_scores(tmp_path):
    path = tmp_path / "lists.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        _with(scores=[2.0, 2.0, 1.0, 1.0]),
        {"prompt": "p", "completions": TEXTS, "ranks": [2, 1, 4, 2], "extra": 1},
    ]))
    kept, dropped = load_list_rows(path)
    assert kept[0]["scores"] == [2.0, 2.0, 1.0, 1.0] and sum(dropped.values()) == 0
    assert kept[1] == {"prompt": "p", "completions": TEXTS, "scores": [2.0, 3.0, 0.0, 2.0]}  # ψ = K − rank


def test_load_from_dataset_and_bad_arguments():
    datasets = pytest.importorskip("datasets")
    kept, _ = load_list_rows(datasets.Dataset.from_list([GOOD, GOOD]))
    assert kept == [GOOD, GOOD]
    with pytest.raises(ValueError, match="on_bad"):
        load_list_rows([GOOD], on_bad="drop")
    with pytest.raises(DataError, match="no rows"):
        load_list_rows([])


@pytest.fixture(scope="module")
def tokenizer():
    from alignlib.pocket import build_tokenizer
    from alignlib.worlds import get_world

    return build_tokenizer(get_world("reviews"))


def test_collate_layout_aligns_rows_with_scores(tokenizer):
    """Row j·B + b holds completion j of list b; list_logps maps row values back to [b, j] next to scores[b, j]."""
    rows = [GOOD, _with(prompt="review the cafe :", completions=TEXTS[::-1], scores=[0.5, 1.5, 2.5, 3.5]),
            _with(completions=TEXTS[1:] + TEXTS[:1], scores=[9.0, 8.0, 7.0, 6.0])]
    examples, scores = tokenize_list_rows(rows, tokenizer)
    assert scores.shape == (3, 4) and scores.dtype == torch.float32
    batch = collate_lists(examples, scores, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 12 and torch.equal(batch["scores"], scores)
    row_ids = torch.arange(12, dtype=torch.float64)
    as_lists = list_logps(row_ids, 4)
    for b, row in enumerate(rows):
        for j, text in enumerate(row["completions"]):
            r = j * 3 + b
            assert as_lists[b, j] == r and batch["scores"][b, j] == row["scores"][j]
            ids = batch["input_ids"][r][batch["completion_mask"][r].bool()].tolist()
            assert ids == tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with pytest.raises(ValueError, match="scores"):
        collate_lists(examples, scores[:2], tokenizer.pad_token_id)


def test_tokenize_lists_limits(tokenizer):
    with pytest.raises(DataError, match="row 0: prompt has"):
        tokenize_list_rows([GOOD], tokenizer, max_prompt_length=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        examples, _ = tokenize_list_rows([GOOD], tokenizer, max_completion_length=3)
    assert all(len(c) == 3 for c in examples[0].completions)
    assert any("4 completion(s)" in str(w.message) for w in caught)


# ================================================================== lists to pairs
def test_lists_to_pairs_counts_and_order():
    rows = [GOOD, _with(completions=TEXTS[::-1]), _with(scores=[1.0, 1.0, 0.0, 0.0]), _with(scores=[5.0] * 4)]
    all_pairs = lists_to_pairs(rows, "all_pairs")
    assert len(all_pairs) == 6 + 6 + 4 + 0  # K(K−1)/2 without ties; tied pairs and all-tied lists give none
    assert all(p["chosen_score"] > p["rejected_score"] for p in all_pairs)
    assert [(p["chosen"], p["rejected"]) for p in all_pairs[:3]] == [(TEXTS[0], TEXTS[1]), (TEXTS[0], TEXTS[2]),
                                                                     (TEXTS[0], TEXTS[3])]
    best_worst = lists_to_pairs(rows, "best_worst")
    assert len(best_worst) == 3
    assert (best_worst[0]["chosen"], best_worst[0]["rejected"]) == (TEXTS[0], TEXTS[3])
    assert (best_worst[1]["chosen"], best_worst[1]["rejected"]) == (TEXTS[3], TEXTS[0])  # scores follow positions
    assert (best_worst[2]["chosen"], best_worst[2]["rejected"]) == (TEXTS[0], TEXTS[2])  # first of tied best/worst
    with pytest.raises(ValueError, match="unknown mode"):
        lists_to_pairs(rows, "top")


def test_all_pairs_loss_equals_dpo_on_the_converted_pairs():
    """Without ties every list has K(K−1)/2 pairs, so the per-list average equals DPO averaged over lists_to_pairs."""
    policy, ref, scores = _lists(b=3, k=4, seed=10)
    rows = [{"prompt": str(b), "completions": [f"{b}-{j}" for j in range(4)], "scores": scores[b].tolist()}
            for b in range(3)]
    index = {f"{b}-{j}": (b, j) for b in range(3) for j in range(4)}
    pairs = lists_to_pairs(rows, "all_pairs")
    chosen = [index[p["chosen"]] for p in pairs]
    rejected = [index[p["rejected"]] for p in pairs]

    def pick(t, where):
        return torch.stack([t[b, j] for b, j in where])

    dpo, _ = dpo_loss(pick(policy, chosen), pick(policy, rejected), pick(ref, chosen), pick(ref, rejected))
    assert pairwise_from_list_loss(policy, ref, scores, mode="all_pairs")[0].item() == pytest.approx(dpo.item(),
                                                                                                    abs=TOL)


# ------------------------------------------------------------------ the loop's listwise method
def test_listwise_method_trains_on_generated_lists(tmp_path, reviews_world):
    """--method listwise: lists of K sampled completions scored by gold reward, a loss from LISTWISE_LOSSES."""
    from alignlib.config import TrainConfig
    from alignlib.loop import train

    for name in ("lipo_lambda", "pro"):
        cfg = TrainConfig(method="listwise", listwise_loss=name, samples_per_prompt=4, num_examples=64, max_steps=6,
                          per_device_train_batch_size=4, learning_rate=1e-4, output_dir=str(tmp_path / name),
                          save_steps=0, progress=False, logging_steps=0)
        history = train(cfg).history
        assert len(history) == 6 and all(math.isfinite(r["loss"]) for r in history), name
        assert "rewards/accuracies" in history[0]


def test_listwise_config_errors():
    from alignlib.config import TrainConfig

    with pytest.raises(ValueError, match="unknown listwise_loss 'lambdarank'"):
        TrainConfig(method="listwise", listwise_loss="lambdarank")
    with pytest.raises(ValueError, match="samples_per_prompt must be ≥ 2"):
        TrainConfig(method="listwise", samples_per_prompt=1)
    with pytest.raises(ValueError, match="beta .* must be > 0 for --method dpo"):
        TrainConfig(method="dpo", beta=0.0)
    TrainConfig(method="grpo", beta=0.0)  # GRPO without a KL term is TRL's default


# ------------------------------------------------------------------ online lists (alignlib.online.OnlineLists)
def _online_lists(model, tok, world, k=4, **kw):
    from alignlib.online import OnlineLists

    args = {"per_device": 6, "accumulation": 1, "world_size": 1, "seed": 3, "max_new_tokens": 16,
            "reward_fn": world.gold_reward}
    args.update(kw)
    return OnlineLists(lambda: model, tok, world.prompts("train"), list_size=k, **args)


def _decoded(tok, batch):
    return [tok.decode(row[m.bool()], skip_special_tokens=True).strip()
            for row, m in zip(batch["input_ids"], batch["completion_mask"])]


def test_online_lists_are_seeded_distinct_scored_and_completion_major(pocket_reviews, reviews_world):
    model, tok = pocket_reviews
    src = _online_lists(model, tok, reviews_world)
    a, b = src.micro_batch(2, 0, 0), src.micro_batch(2, 0, 0)
    for key in a:
        assert torch.equal(a[key], b[key]), key  # a function of (seed, step, micro, rank)
    n = a["scores"].shape[0]
    assert a["scores"].shape == (n, 4) and a["input_ids"].shape[0] == 4 * n and n + a["lists_dropped"].item() == 6
    texts = _decoded(tok, a)
    lists = [[texts[j * n + b] for j in range(4)] for b in range(n)]      # row j·B + b is completion j of list b
    for b, items in enumerate(lists):
        assert len(set(items)) == 4, items                                  # no completion twice in a list
        assert len(set(a["scores"][b].tolist())) > 1                        # never a list of ties only
    assert n == 6  # (seed 3: no list dropped, so list b answers prompt b)
    prompts = src.step_prompts(2, 0, 0)
    gold = reviews_world.gold_reward([p for p in prompts for _ in range(4)], [t for items in lists for t in items])
    assert a["scores"].flatten().tolist() == pytest.approx(gold, abs=1e-6)


def test_online_lists_redraw_duplicates_and_drop_what_cannot_be_ranked(pocket_reviews, reviews_world):
    """At a low temperature samples repeat: repeats are redrawn, and lists still short of K distinct are dropped."""
    model, tok = pocket_reviews
    src = _online_lists(model, tok, reviews_world, k=8, temperature=0.4, per_device=8)
    batches = [src.micro_batch(step, 0, 0) for step in range(3)]
    assert src.redrawn > 0
    for batch in batches:
        n = batch["scores"].shape[0]
        texts = _decoded(tok, batch)
        assert all(len({texts[j * n + b] for j in range(8)}) == 8 for b in range(n))
    assert sum(batch["lists_dropped"].item() for batch in batches) == sum(src.dropped.values())
    # a reward that cannot tell samples apart leaves nothing to rank: a clear error, not a NaN loss
    flat = _online_lists(model, tok, reviews_world, reward_fn=lambda p, t: [0.5] * len(t))
    with pytest.raises(ValueError, match="every one of the 6 sampled lists"):
        flat.micro_batch(0, 0, 0)
    with pytest.raises(ValueError, match="list_size"):
        _online_lists(model, tok, reviews_world, k=1)


def test_online_listwise_method_trains_through_the_loop(tmp_path, reviews_world):
    """--method online_listwise: the listwise step on lists sampled from the policy being trained."""
    from alignlib.config import TrainConfig
    from alignlib.loop import train
    from alignlib.methods import METHODS

    assert METHODS["online_listwise"].step is not None and METHODS["online_listwise"].source is not None
    cfg = TrainConfig(method="online_listwise", listwise_loss="listmle", samples_per_prompt=4, max_steps=4,
                      per_device_train_batch_size=4, max_new_tokens=16, output_dir=str(tmp_path / "ol"),
                      save_steps=0, progress=False, logging_steps=0)
    history = train(cfg).history
    assert len(history) == 4 and all(math.isfinite(r["loss"]) and math.isfinite(r["score"]) for r in history)
    assert "rewards/accuracies" in history[0] and "lists_dropped" in history[0]
    with pytest.raises(ValueError, match="online_listwise ranks samples of one prompt"):
        TrainConfig(method="online_listwise", samples_per_prompt=1)
